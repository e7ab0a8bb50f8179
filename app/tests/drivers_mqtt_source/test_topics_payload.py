"""Topic filters, topic → tag mapping and payload decoding: the pure parts of the MQTT source."""

from __future__ import annotations

import struct

import pytest

from edge_gateway.config.expr import compile_scale
from edge_gateway.drivers.mqtt_source import topics
from edge_gateway.drivers.mqtt_source.mapping import Template, TemplateError, TopicMap
from edge_gateway.drivers.mqtt_source.model import MqttTag, Payload
from edge_gateway.drivers.mqtt_source.payload import Decoder, Malformed, PointerError, parse_pointer

L = topics.levels


@pytest.mark.parametrize("text", ["a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "$SYS/#", "a//b"])
def test_valid_filters(text: str) -> None:
    assert topics.check_filter(text) == tuple(text.split("/"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("a/#/b", "'#' must be a whole level and the last"),
        ("a/b#", "'#' must be a whole level"),
        ("a/b+/c", r"'\+' must be a whole level"),
        ("$share/g/a/+", "shared subscriptions"),
        ("a\0b", "NUL"),
    ],
)
def test_invalid_filters(text: str, why: str) -> None:
    with pytest.raises(topics.FilterError, match=why):
        topics.check_filter(text)


def test_match_captures_levels() -> None:
    assert topics.match(L("sensors/+/temp"), L("sensors/boiler/temp")) == ("boiler",)
    assert topics.match(L("sensors/+/temp"), L("sensors/boiler/hum")) is None
    assert topics.match(L("sensors/+/temp"), L("sensors/a/b/temp")) is None
    assert topics.match(L("site/+/#"), L("site/hall/line1/m3")) == ("hall", "line1/m3")
    assert topics.match(L("a/#"), L("a")) == ("",)  # '#' also matches the parent level
    assert topics.match(L("#"), L("$SYS/broker/uptime")) is None  # wildcards never reach $ topics
    assert topics.match(L("$SYS/#"), L("$SYS/broker/uptime")) == ("broker/uptime",)


def test_specificity_orders_literal_before_plus_before_hash() -> None:
    filters = ["#", "a/#", "a/+", "a/+/#", "a/b", "+/b"]
    ordered = sorted(filters, key=lambda f: topics.specificity(L(f)))
    assert ordered == ["a/b", "a/+", "a/+/#", "a/#", "+/b", "#"]


def test_covers_and_overlaps() -> None:
    assert topics.covers(L("sensors/#"), L("sensors/+/temp"))
    assert topics.covers(L("sensors/+/temp"), L("sensors/x/temp"))
    assert not topics.covers(L("sensors/+/temp"), L("sensors/#"))
    assert not topics.covers(L("#"), L("$SYS/x"))
    assert topics.overlaps(L("sensors/+/temp"), L("sensors/x/#"))
    assert topics.overlaps(L("a/#"), L("a"))
    assert not topics.overlaps(L("a/+"), L("b/+"))
    assert not topics.overlaps(L("a/+"), L("a/b/c"))


def _tag(tag: str, topic: str, fmt: str = "number", pointer: str = "", datatype: str = "float64") -> MqttTag:
    return MqttTag(tag, "d", topic, Payload(fmt, pointer), datatype)  # type: ignore[arg-type]


def test_exact_topic_beats_patterns_and_most_specific_pattern_wins() -> None:
    m = TopicMap(
        [
            _tag("all.{1}", "lab/#"),
            _tag("lab.{1}.{2}", "lab/+/+"),
            _tag("lab.{1}.temp", "lab/+/temp"),
            _tag("lab.boiler_temp", "lab/boiler/temp"),
        ]
    )
    assert [t for t, _ in m.route("lab/boiler/temp")] == ["lab.boiler_temp"]
    assert [t for t, _ in m.route("lab/oven/temp")] == ["lab.oven.temp"]
    assert [t for t, _ in m.route("lab/oven/hum")] == ["lab.oven.hum"]
    assert [t for t, _ in m.route("lab/oven/x/y")] == ["all.oven.x.y"]  # '#' keeps its levels, '.'-joined
    assert m.route("other/x") == ()


def test_one_topic_many_tags_in_config_order() -> None:
    m = TopicMap([_tag("env.{1}.t", "env/+", "json", "/t"), _tag("env.{1}.h", "env/+", "json", "/h")])
    assert [t for t, _ in m.route("env/r1")] == ["env.r1.t", "env.r1.h"]


def test_a_capture_that_makes_no_valid_tag_renders_none() -> None:
    m = TopicMap([_tag("lab.{1}.temp", "lab/+/temp")])
    assert [t for t, _ in m.route("lab/has space/temp")] == [None]
    assert [t for t, _ in m.route("lab//temp")] == [None]


@pytest.mark.parametrize(
    ("tag", "captures", "why"),
    [
        ("lab.{3}", 2, r"\{3\} but the topic has 2 wildcard levels"),
        ("lab.{1}", 0, "has no wildcards"),
        ("lab.{0}", 1, r"must be \{1\}"),
        ("lab.{x}", 1, r"must be \{1\}"),
        ("lab.{1", 1, "unbalanced"),
        ("lab/{1}", 1, "letters, digits"),
    ],
)
def test_bad_templates(tag: str, captures: int, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        Template.parse(tag, captures)


def test_json_pointer_syntax() -> None:
    assert parse_pointer("") == ()
    assert parse_pointer("/a/b") == ("a", "b")
    assert parse_pointer("/a~1b/c~0d/0") == ("a/b", "c~d", "0")
    with pytest.raises(PointerError, match="starts with '/'"):
        parse_pointer("a/b")
    with pytest.raises(PointerError, match="URI-fragment"):
        parse_pointer("#/a")
    with pytest.raises(PointerError, match="followed by 0 or 1"):
        parse_pointer("/a~2")


def dec(fmt: str, datatype: str, pointer: str = "", endian: str = "big", scale: str | None = None) -> Decoder:
    return Decoder(Payload(fmt, pointer, endian), datatype, compile_scale(scale) if scale else None)  # type: ignore[arg-type]


def test_number_payloads() -> None:
    assert dec("number", "int16")(b" -12\n") == -12
    assert dec("number", "float32")(b"21.5") == 21.5
    assert dec("number", "uint16")(b"7.0") == 7  # an integral float fits an integer type
    assert dec("number", "bool")(b"TRUE") is True
    assert dec("number", "bool")(b"0") is False
    assert dec("number", "uint16", scale="value / 10")(b"215") == 21.5


def test_json_payloads() -> None:
    doc = b'{"a": {"b/c": [1, 2.5, {"x~y": 3}]}, "ok": true, "name": "pump", "n": null}'
    assert dec("json", "float64", "/a/b~1c/1")(doc) == 2.5
    assert dec("json", "int32", "/a/b~1c/2/x~0y")(doc) == 3
    assert dec("json", "bool", "/ok")(doc) is True
    assert dec("json", "string", "/name")(doc) == "pump"
    assert dec("json", "int32")(b"42") == 42  # no pointer: the whole document


def test_bytes_and_string_payloads() -> None:
    assert dec("bytes", "uint16")(b"\x01\x02") == 0x0102
    assert dec("bytes", "uint16", endian="little")(b"\x01\x02") == 0x0201
    assert dec("bytes", "float32")(struct.pack(">f", 1.5)) == 1.5
    assert dec("bytes", "int64")(struct.pack(">q", -5)) == -5
    assert dec("bytes", "binary")(b"\x00\xff") == b"\x00\xff"
    assert dec("bytes", "bool")(b"\x01") is True
    assert dec("string", "string")("héllo".encode()) == "héllo"


@pytest.mark.parametrize(
    ("decoder", "raw", "reason"),
    [
        (dec("number", "int16"), b"abc", "number"),
        (dec("number", "int16"), b"nan", "number"),
        (dec("number", "int16"), b"40000", "range"),
        (dec("number", "uint16"), b"-1", "range"),
        (dec("number", "uint16"), b"1.5", "type"),
        (dec("number", "float32"), b"1e39", "range"),
        (dec("number", "bool"), b"maybe", "number"),
        (dec("number", "int16"), b"\xff\xfe", "encoding"),
        (dec("json", "int16", "/v"), b"{not json", "json"),
        (dec("json", "int16", "/v"), b'{"v": NaN}', "json"),
        (dec("json", "int16", "/v"), b'{"w": 1}', "pointer"),
        (dec("json", "int16", "/v/0"), b'{"v": 5}', "pointer"),
        (dec("json", "int16", "/v/01"), b'{"v": [1, 2]}', "pointer"),
        (dec("json", "int16", "/v"), b'{"v": null}', "type"),
        (dec("json", "int16", "/v"), b'{"v": "12"}', "type"),
        (dec("json", "bool", "/v"), b'{"v": 2}', "type"),
        (dec("json", "string", "/v"), b'{"v": 1}', "type"),
        (dec("json", "uint64", "/v"), b'{"v": 18446744073709551616}', "range"),
        (dec("bytes", "uint32"), b"\x00\x01", "size"),
        (dec("bytes", "bool"), b"\x02", "range"),
        (dec("bytes", "float32"), struct.pack(">f", float("nan")), "range"),
        (dec("string", "string"), b"\xff", "encoding"),
        (dec("number", "int16", scale="value / (value - value)"), b"3", "scale"),
    ],
)
def test_malformed_payloads_raise_with_a_reason(decoder: Decoder, raw: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as e:
        decoder(raw)
    assert e.value.reason == reason
