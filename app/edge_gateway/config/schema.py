"""The JSON Schemas shipped with the package, and schema errors as `file:line` problems."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from edge_gateway.config.problems import printable
from edge_gateway.config.source import Source, item, key_path, where
from edge_gateway.core import registry


@cache
def schema(name: str) -> dict[str, Any]:
    """The schema of one file: the shipped JSON, plus the fragments of the installed plugins that use the
    generic tables (core/driver.py): their endpoint schemes, and free-form `address` mappings, which the
    loader then checks with the owning plugin's fragment. Without such a plugin it is the JSON as shipped."""
    text = resources.files("edge_gateway.config").joinpath("schemas", f"{name}.json").read_text()
    out = dict(json.loads(text))
    _add_own_tables(out, name)
    generic = [p for p in registry.drivers().values() if p.generic]
    if generic and name == "endpoints":
        ep = out["$defs"]["endpoint"]
        schemes = [sc for p in generic for sc in p.schemes]
        ep["properties"]["scheme"]["enum"] = [*ep["properties"]["scheme"]["enum"], *schemes]
        ep["else"] = {  # opts of a plugin scheme: checked by the loader against the plugin's fragment
            "if": {"properties": {"scheme": {"enum": schemes}}, "required": ["scheme"]},
            "else": ep["else"],
        }
    if generic and name == "variables":
        out["$defs"]["variable"]["properties"]["address"] = {"type": "object"}
    if name == "connector":
        _add_connectors(out)
    return out


def _add_own_tables(s: dict[str, Any], name: str) -> None:
    """The parts of the file schemas that the plugins on their own Snapshot tables ship (`file_schema`,
    core/driver.py; the two built-ins, each from its folder's schema.json): their endpoint schemes and
    `$defs/<name>_opts`, chosen by scheme (the first plugin by name is the last `else`); their drivers.yml
    cfg as `$defs/<name>` (the loader checks `cfg` against it); their variables.yml properties."""
    plugins = registry.drivers()
    own = [(n, p, fs) for n, p in sorted(plugins.items()) if (fs := getattr(p, "file_schema", None))]
    defs = s.setdefault("$defs", {})
    if name == "endpoints":
        ep = defs["endpoint"]
        chain: dict[str, Any] = {}
        for n, p, fs in own:
            ep["properties"]["scheme"]["enum"] = [*ep["properties"]["scheme"]["enum"], *p.schemes]
            defs[f"{n}_opts"] = dict(fs["endpoints"]["opts"])
            branch = {"properties": {"opts": {"$ref": f"#/$defs/{n}_opts"}}}
            if not chain:
                chain = {"else": branch}
            else:
                cond = {"properties": {"scheme": {"enum": list(p.schemes)}}, "required": ["scheme"]}
                chain = {"if": cond, "then": branch, "else": chain["else"] if len(chain) == 1 else chain}
        if chain:
            ep.update(chain if len(chain) > 1 else {"if": False, **chain})
    elif name == "drivers":
        for n, _p, fs in own:
            defs[n] = dict(fs["drivers"]["cfg"])
    elif name == "variables":
        props = defs["variable"]["properties"]
        for _n, _p, fs in own:
            props.update(fs["variables"]["properties"])


def _add_connectors(s: dict[str, Any]) -> None:
    """connector.yml's entry schema: one branch per installed connector kind, with the schema its
    plugin ships (`#/$defs/…` references resolve against this file's shared defs). An entry without
    `kind` is checked as mqtt5, the only kind there was."""
    defs = s.setdefault("$defs", {})
    branches: list[dict[str, Any]] = []
    plugins = registry.connectors()
    kinds = sorted(plugins)
    for kind in kinds:
        frag = getattr(plugins[kind], "schema", None)
        if not isinstance(frag, dict):
            continue
        defs[f"kind_{kind}"] = dict(frag)
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


# Keywords whose verdict on a scalar depends on that scalar alone (no $ref, no format, no subschema).
_SCALAR_KEYWORDS = frozenset(
    {"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
     "exclusiveMaximum", "multipleOf", "description", "title", "default", "examples"}
)  # fmt: skip
_SCALARS = (str, int, float, bool, type(None))
_VALID_MAX = 100_000  # remembered (schema, value) pairs before the memory starts over


class _KnownValid:
    """Scalars already found valid against a property's scalar-only schema: on 10 000 variables
    `driver_id: s0u1`, `datatype: uint16`, `type: holding`, `addr: 7` come back thousands of times,
    and jsonschema spends ~10 µs making a validator for each value it descends into. A value not
    seen valid is validated as ever, so every error is found and worded as before."""

    def __init__(self) -> None:
        self.pairs: set[tuple[int, type, Any]] = set()
        self.schemas: dict[int, dict[str, Any]] = {}  # id → the schema, kept alive so its id stays its own

    def key(self, subschema: Any, value: Any) -> tuple[int, type, Any] | None:
        if type(value) not in _SCALARS or not isinstance(subschema, dict) or not subschema.keys() <= _SCALAR_KEYWORDS:
            return None
        return (id(subschema), type(value), value)  # the type: 1, 1.0 and True are equal keys otherwise

    def add(self, subschema: dict[str, Any], key: tuple[int, type, Any]) -> None:
        if len(self.pairs) >= _VALID_MAX or len(self.schemas) >= _VALID_MAX:
            self.pairs.clear()
            self.schemas.clear()
        self.schemas[id(subschema)] = subschema
        self.pairs.add(key)


_KNOWN = _KnownValid()


def _properties(validator: Any, properties: dict[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    """jsonschema's `properties`, skipping a scalar already found valid against the same schema."""
    if not validator.is_type(instance, "object"):
        return
    for prop, subschema in properties.items():
        if prop not in instance:
            continue
        value = instance[prop]
        key = _KNOWN.key(subschema, value)
        if key is not None and key in _KNOWN.pairs:
            continue
        errors = list(validator.descend(value, subschema, path=prop, schema_path=prop))
        if key is not None and not errors:
            _KNOWN.add(subschema, key)
        yield from errors


_Validator = validators.extend(
    Draft202012Validator,
    validators={"properties": _properties},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


_LITERAL = frozenset({"$defs", "enum", "const", "default", "examples"})  # values, not schemas


def inline_refs(root: dict[str, Any]) -> dict[str, Any]:
    """`root` with each `{"$ref": "#/$defs/X"}` (nothing beside it) replaced by X itself, inlined
    the same way; `$defs` stays as it is for every other reference. jsonschema resolves a `$ref`
    anew for each instance it meets (a resolver and a validator made every time): on 10 000
    variables that is a third of the validation. The errors are the same: the same keywords meet
    the same values, and an error's schema is the definition's content. A definition that refers
    to itself keeps its `$ref`."""
    defs = root.get("$defs") or {}
    done: dict[str, Any] = {}

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(x, seen) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if len(node) == 1 and isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name not in defs or name in seen:
                return node
            if name not in done:
                done[name] = walk(defs[name], seen | {name})
            return done[name]
        return {k: v if k in _LITERAL else walk(v, seen) for k, v in node.items()}

    return {k: v if k in _LITERAL else walk(v, frozenset()) for k, v in root.items()}


@cache
def validator(name: str) -> Draft202012Validator:
    v: Draft202012Validator = _Validator(inline_refs(schema(name)), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return v


def check(src: Source, name: str, data: Any, schema_ref: str | None = None, base: tuple = ()) -> set[tuple]:
    """Validate `data` (found at `base` in `src`); report each error at its line. Returns the
    top-level entries (first path element) that had errors, so the loader can skip building them."""
    v = validator(name)
    if schema_ref is not None:
        v = v.evolve(schema=v.schema["$defs"][schema_ref] | {"$defs": v.schema["$defs"]})
    return _errors(v, src, data, base)


def check_with(src: Source, schema_doc: dict[str, Any], data: Any) -> set[tuple]:
    """Validate `data` against a schema that is not one of the five files' (the bootstrap file's
    `config_source`, config/bootstrap.py), with the same `file:line` messages."""
    v: Draft202012Validator = _Validator(schema_doc, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return _errors(v, src, data, ())


def check_fragment(src: Source, name: str, fragment: dict[str, Any], data: Any, base: tuple) -> set[tuple]:
    """Validate `data` at `base` against a plugin's schema fragment (it may use the `$defs` of `name`,
    such as #/$defs/duration)."""
    return _errors(_fragment_validator(name, fragment), src, data, base)


_FRAGMENTS: dict[tuple[str, str], Draft202012Validator] = {}


def _fragment_validator(name: str, fragment: dict[str, Any]) -> Draft202012Validator:
    """The validator of a fragment, made once: a Modbus tag's `address` is checked this way 10 000
    times on a 10 000-tag config. Keyed by the fragment's JSON (callers pass fresh copies)."""
    key = (name, json.dumps(fragment, sort_keys=True, default=repr))
    v = _FRAGMENTS.get(key)
    if v is None:
        base = validator(name)
        doc = fragment | {"$defs": {**base.schema["$defs"], **fragment.get("$defs", {})}}
        v = _FRAGMENTS[key] = base.evolve(schema=inline_refs(doc))
    return v


def _errors(v: Draft202012Validator, src: Source, data: Any, base: tuple) -> set[tuple]:
    bad: set[tuple] = set()
    for err in sorted(v.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = base + tuple(err.absolute_path)
        _report(src, err, path)
        bad.add(path[:1])
    return bad


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """`; did you mean uint16?` when one of `choices` is close to `word` (a typo, or the wrong case)."""
    if not isinstance(word, str):
        return ""
    names = {str(c).lower(): str(c) for c in choices if isinstance(c, str) and c != word}
    close = difflib.get_close_matches(word.lower(), list(names), n=1, cutoff=0.6)
    return f"; did you mean {printable(names[close[0]])}?" if close else ""


def _prefixed(head: str, message: str) -> str:
    return f"{head}: {message}" if head else message


def _report(src: Source, err: ValidationError, path: tuple) -> None:
    if err.validator == "additionalProperties":
        known = err.schema.get("properties", {})
        extra = [k for k in err.instance if k not in known]
        for k in extra:
            hint = did_you_mean(k, known)
            src.error((*path, k), _prefixed(where(src, path), f"unknown key {k!r}{hint}"), key=True)
        return
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        src.error(path, _prefixed(where(src, path), f"missing required key {', '.join(map(repr, missing))}"))
        return
    if err.validator == "propertyNames":
        src.error((*path, err.instance), f"invalid id {err.instance!r}: use letters, digits and _", key=True)
        return
    name, key = item(src, path), key_path(src, path)
    trap = src.yaml_trap(path)
    if err.validator == "enum" and key:
        # `datatype 'unit16' is not one of bool, uint16, ...; did you mean uint16?`
        words = ", ".join(map(str, err.validator_value))
        guess = did_you_mean(err.instance, err.validator_value)
        src.error(path, _prefixed(name, f"{key} {err.instance!r} is not one of {words}{guess}{trap}"))
        return
    desc = err.schema.get("description") if isinstance(err.schema, dict) else None
    if err.validator in ("pattern", "type") and desc and desc.startswith(("a ", "an ", "one ", "host")):
        # "'1 sec' is not a duration like 500ms, 1s" reads better than the raw regex.
        message = f"{err.instance!r} is not {desc}{trap}"
        src.error(path, _prefixed(name, f"{key} {message}" if key else message))
        return
    if err.validator == "type":
        # `qos must be an integer, not 1.0`: YAML words (mapping, list), not JSON's (object, array).
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in wanted)
        subject = key or name or "the top level"
        src.error(path, _prefixed(name if key else "", f"{subject} must be {words}, not {err.instance!r}{trap}"))
        return
    src.error(path, f"{where(src, path) or '(top level)'}: {err.message.rstrip('.')}{trap}")


_TYPE_WORDS: dict[str, str] = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}
