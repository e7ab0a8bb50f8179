"""The built-in plugins' schema fragments ship in their folders (drivers/*/schema.json) and are merged
into the file schemas by config/schema.py: the assembled schema is the one the files used to carry."""

from __future__ import annotations

import json
from importlib import resources

from edge_gateway.config import schema
from edge_gateway.core import registry


def _shipped(name: str) -> str:
    return resources.files("edge_gateway.config").joinpath("schemas", f"{name}.json").read_text()


def test_the_shipped_file_schemas_name_no_built_in_plugin() -> None:
    for name in ("endpoints", "drivers", "variables"):
        text = _shipped(name)
        for word in ("modbus_opts", "mqtt_opts", '"modbus"', '"mqtt"', "holding", "unit_id", "pointer"):
            assert word not in text, (name, word)


def test_each_built_in_fragment_is_merged_where_the_files_had_it() -> None:
    mb, mq = registry.driver("modbus"), registry.driver("mqtt")
    ep = schema.schema("endpoints")
    assert ep["$defs"]["modbus_opts"] == mb.file_schema["endpoints"]["opts"]  # type: ignore[attr-defined]
    assert ep["$defs"]["mqtt_opts"] == mq.file_schema["endpoints"]["opts"]  # type: ignore[attr-defined]
    e = ep["$defs"]["endpoint"]
    assert e["properties"]["scheme"]["enum"][:6] == ["tcp", "tls+tcp", "rtu+tcp", "serial", "mqtt", "mqtts"]
    if not any(p.generic for p in registry.drivers().values()):
        assert e["if"] == {"properties": {"scheme": {"enum": ["mqtt", "mqtts"]}}, "required": ["scheme"]}
        assert e["then"] == {"properties": {"opts": {"$ref": "#/$defs/mqtt_opts"}}}
        assert e["else"] == {"properties": {"opts": {"$ref": "#/$defs/modbus_opts"}}}
    dr = schema.schema("drivers")["$defs"]
    assert dr["modbus"] == mb.file_schema["drivers"]["cfg"]  # type: ignore[attr-defined]
    assert dr["mqtt"] == mq.file_schema["drivers"]["cfg"]  # type: ignore[attr-defined]
    props = schema.schema("variables")["$defs"]["variable"]["properties"]
    for p in ("endian", "word_order", "topic", "payload"):
        assert p in props
    json.dumps(schema.schema("endpoints"))  # still plain JSON for `edge-cfg schema`
