"""Codec (every datatype × byte order × word order) and planner (cost model, splitting)."""

from __future__ import annotations

import struct

import pytest

from edge_gateway.config.expr import compile_scale
from edge_gateway.drivers.modbus import codec
from edge_gateway.drivers.modbus.planner import Planner, request_cost

from .conftest import SAMPLES, serial_endpoint, tcp_endpoint, var


@pytest.mark.parametrize("dt", sorted(SAMPLES))
@pytest.mark.parametrize("endian", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_roundtrip_every_numeric_type(dt: str, endian: str, word_order: str) -> None:
    v = var("t", "d", "holding", 0, dt, endian=endian, word_order=word_order)
    regs = codec.encode(v, SAMPLES[dt])
    assert isinstance(regs, list) and len(regs) == v.address.len
    assert codec.decode(v, regs) == pytest.approx(SAMPLES[dt])


def test_orders_match_the_wire_layout() -> None:
    raw = struct.unpack(">2H", struct.pack(">f", 1.5))  # ABCD = 0x3FC0 0x0000
    assert codec.decode(var("t", "d", "holding", 0, "float32"), list(raw)) == 1.5
    assert codec.decode(var("t", "d", "holding", 0, "float32", word_order="little"), [raw[1], raw[0]]) == 1.5
    swapped = [((r & 0xFF) << 8) | (r >> 8) for r in raw]
    assert codec.decode(var("t", "d", "holding", 0, "float32", endian="little"), swapped) == 1.5
    assert codec.decode(var("t", "d", "holding", 0, "uint32", word_order="little"), [0x5678, 0x1234]) == 0x12345678


def test_strings_binary_bool_and_scale() -> None:
    s = var("s", "d", "holding", 0, "string", length=4)
    assert codec.decode(s, codec.encode(s, "AB-7")) == "AB-7"  # type: ignore[arg-type]
    assert codec.decode(s, [0x4142, 0x4300, 0, 0]) == "ABC"
    b = var("b", "d", "holding", 0, "binary", length=2)
    assert codec.decode(b, [0x0102, 0x0304]) == b"\x01\x02\x03\x04"
    assert codec.decode(var("c", "d", "coil", 0, "bool"), [True]) is True
    assert codec.decode(var("h", "d", "holding", 0, "bool"), [7]) is True
    sc = var("x", "d", "holding", 0, "int16", scale=compile_scale("value / 10"))
    assert codec.decode(sc, [215]) == pytest.approx(21.5)
    assert codec.encode(sc, 21.5) == [215]


@pytest.mark.parametrize(
    ("dt", "value", "fragment"),
    [
        ("uint16", 70000, "out of range"),
        ("int16", -40000, "out of range"),
        ("uint16", 1.5, "not representable"),
        ("uint16", "7", "finite number"),
        ("float32", float("nan"), "finite number"),
        ("float32", 1e39, "out of range"),
        ("bool", 2, "true/false"),
    ],
)
def test_encode_refuses_what_does_not_fit(dt: str, value: object, fragment: str) -> None:
    with pytest.raises(codec.EncodeError, match=fragment):
        codec.encode(var("t", "d", "holding", 0, dt), value)  # type: ignore[arg-type]


def test_plan_is_deterministic_and_merges_by_wire_cost() -> None:
    rtu = serial_endpoint("/dev/null", baud=19200)
    vs = tuple(var(f"t{a}", "d", "holding", a, "uint16") for a in (0, 1, 2, 10, 40, 41))
    p = Planner(rtu, 120)
    plan = p.plan(vs)
    assert plan == Planner(rtu, 120).plan(tuple(reversed(vs)))
    cost = request_cost(rtu)  # ≈ 13 bytes + 7 chars of silence at 19200 → ≈ 20 characters
    assert 18 < cost < 25
    # gap 3..9 costs 14 bytes < cost: merged; gap 11..39 costs 58 bytes: a new request
    assert [(r.start, r.count) for r in plan] == [(0, 11), (40, 2)]
    tcp = Planner(tcp_endpoint(502), 120).plan(vs)
    assert [(r.start, r.count) for r in tcp] == [(0, 42)]


def test_plan_respects_max_regs_and_tables() -> None:
    vs = tuple(var(f"h{a}", "d", "holding", a, "uint16") for a in range(100))
    vs += (var("c0", "d", "coil", 0, "bool"), var("i0", "d", "input", 0, "float32"))
    plan = Planner(tcp_endpoint(502), 40).plan(vs)
    assert [(r.fc, r.start, r.count) for r in plan] == [(1, 0, 1), (3, 0, 40), (3, 40, 40), (3, 80, 20), (4, 0, 2)]


def test_forbid_splits_a_merged_read_and_remembers() -> None:
    vs = (var("a", "d", "holding", 0, "uint16"), var("b", "d", "holding", 5, "uint16"))
    p = Planner(tcp_endpoint(502), 120)
    [merged] = p.plan(vs)
    assert p.forbid(merged)
    assert [(r.start, r.count) for r in p.plan(vs)] == [(0, 1), (5, 1)]
    assert not p.forbid(p.plan(vs)[0])  # a single point cannot be split further
