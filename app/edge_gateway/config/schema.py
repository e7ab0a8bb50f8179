"""The JSON Schemas shipped with the package, and schema errors as `file:line` problems."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from edge_gateway.config.source import Source

NAMES = ("endpoints", "drivers", "variables", "connector", "gateway")


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("edge_gateway.config").joinpath("schemas", f"{name}.json").read_text()
    s = dict(json.loads(text))
    if name == "connector":
        _add_connectors(s)
    return s


def _add_connectors(s: dict[str, Any]) -> None:
    """connector.yml's entry schema: one branch per installed connector kind, with the schema its
    plugin ships (`#/$defs/…` references resolve against this file's shared defs). An entry without
    `kind` is checked as mqtt5, the only kind there was."""
    from edge_gateway.delivery.lookup import installed, schema_of

    defs = s.setdefault("$defs", {})
    branches: list[dict[str, Any]] = []
    kinds = sorted(installed())
    for kind in kinds:
        frag = schema_of(kind)
        if frag is None:
            continue
        defs[f"kind_{kind}"] = frag
        cond: dict[str, Any] = {"properties": {"kind": {"const": kind}}}
        if kind != "mqtt5":
            cond["required"] = ["kind"]
        branches.append({"if": cond, "then": {"$ref": f"#/$defs/kind_{kind}"}})
    defs["connector"] = {  # no "type": each kind's schema checks the rest (strict)
        "properties": {"kind": {"enum": kinds}},
        "allOf": branches,
    }


def _is_integer(_checker: object, instance: object) -> bool:
    """JSON Schema's integer takes 1.0 and -0.0; a setting read as a Python float would reach a
    socket or paho as one (`qos: -0.0`, `port: 502.0`), so here an integer is an int."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@cache
def validator(name: str) -> Draft202012Validator:
    v: Draft202012Validator = _Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return v


def check(src: Source, name: str, data: Any, schema_ref: str | None = None, base: tuple = ()) -> set[tuple]:
    """Validate `data` (found at `base` in `src`); report each error at its line. Returns the
    top-level entries (first path element) that had errors, so the loader can skip building them."""
    v = validator(name)
    if schema_ref is not None:
        v = v.evolve(schema=v.schema["$defs"][schema_ref] | {"$defs": v.schema["$defs"]})
    bad: set[tuple] = set()
    for err in sorted(v.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = base + tuple(err.absolute_path)
        _report(src, err, path)
        bad.add(path[:1])
    return bad


def _report(src: Source, err: ValidationError, path: tuple) -> None:
    where = "/".join(map(str, path)) or "(top level)"
    if err.validator == "additionalProperties":
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        for k in extra:
            src.error((*path, k), f"{where}: unknown key {k!r}", key=True)
        return
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        src.error(path, f"{where}: missing required key {', '.join(map(repr, missing))}")
        return
    if err.validator == "propertyNames":
        src.error((*path, err.instance), f"invalid id {err.instance!r}: use letters, digits and _", key=True)
        return
    hint = err.schema.get("description") if isinstance(err.schema, dict) else None
    if err.validator in ("pattern", "type") and hint and hint.startswith(("a ", "an ", "one ", "host")):
        # "'1 sec' is not a duration like 500ms, 1s" reads better than the raw regex.
        src.error(path, f"{where}: {err.instance!r} is not {hint}{src.yaml_trap(path)}")
        return
    src.error(path, f"{where}: {err.message}{src.yaml_trap(path)}")
