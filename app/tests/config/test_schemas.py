"""The shipped JSON Schemas: valid draft 2020-12, strict, and one unit grammar with units.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from edge_gateway.config import schema
from edge_gateway.config.model import NAMES
from edge_gateway.config.units import DURATION_RE, RATE_RE, SIZE_RE

EDGE_CFG = Path(sys.executable).with_name("edge-cfg")
GRAMMAR = {"duration": DURATION_RE.pattern, "size": SIZE_RE.pattern, "rate": RATE_RE.pattern}


def _objects(node: Any, path: str = "") -> list[tuple[str, dict]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.items():
            out += _objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _objects(v, f"{path}/{i}")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_and_strict(name: str) -> None:
    s = schema.schema(name)
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for path, obj in _objects(s):
        if "properties" in obj and obj.get("type") == "object":  # not `if: {properties: …}` conditions
            assert obj.get("additionalProperties") is False, f"{name}{path} is not strict"


@pytest.mark.parametrize("name", NAMES)
def test_units_share_one_grammar_with_the_parser(name: str) -> None:
    s = schema.schema(name)
    for unit, pattern in GRAMMAR.items():
        if unit in s.get("$defs", {}):
            assert s["$defs"][unit]["pattern"] == pattern
    for path, obj in _objects(s):
        # every other duration/size/rate goes through $ref, so there is one copy per file
        if obj.get("pattern") in GRAMMAR.values():
            assert path.startswith("/$defs/") and path.rsplit("/", 1)[1] in GRAMMAR, (
                f"{name}{path} inlines a unit pattern: use {{'$ref': '#/$defs/<duration|size|rate>'}}"
            )


def test_cli_schema_prints_all_or_one() -> None:
    r = subprocess.run([EDGE_CFG, "schema"], capture_output=True, text=True)
    assert r.returncode == 0 and set(json.loads(r.stdout)) == set(NAMES)
    r = subprocess.run([EDGE_CFG, "schema", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
