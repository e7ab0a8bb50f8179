"""codec.BlockDecoder (one struct call per read) against codec.decode (one tag at a time): the same value
and quality for every datatype, byte order, word order and scale, on random registers and random layouts
(gaps, overlapping tags, mixed orders in one read). Seeded, so every run checks the same cases."""

from __future__ import annotations

import math
import random
import struct

import pytest

from edge_gateway.config.expr import compile_scale
from edge_gateway.core.frame import GOOD, Frame, bad
from edge_gateway.drivers.modbus import codec, pdu
from edge_gateway.drivers.modbus.model import Variable
from edge_gateway.drivers.modbus.planner import Planner

from .conftest import tcp_endpoint, var

WORD_TYPES = ["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64", "bool", "string", "binary"]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
SCALES = [None, "value * 0.1 + 3", "value / (value - 7)", "value ** 40"]  # the last two fail for some values: bad:scale


def reference(v: Variable, regs: list[int] | list[bool], start: int, ts: int) -> Frame:
    """What the line produced before the block decoder: codec.decode on the tag's own registers."""
    off = v.address.addr - start
    try:
        return Frame(0, ts, v.tag, codec.decode(v, regs[off : off + v.address.len]))
    except (ArithmeticError, ValueError, struct.error) as exc:
        return Frame(0, ts, v.tag, None, bad("scale" if isinstance(exc, ArithmeticError) else "decode"))


def same(a: Frame, b: Frame) -> bool:
    if (a.tag, a.q, type(a.value)) != (b.tag, b.q, type(b.value)):
        return False
    if isinstance(a.value, float) and isinstance(b.value, float):
        return a.value == b.value or (math.isnan(a.value) and math.isnan(b.value))
    return a.value == b.value


def random_variables(rng: random.Random, n: int, overlap: bool) -> list[Variable]:
    out, addr = [], rng.randrange(0, 50)
    for i in range(n):
        dt = rng.choice(WORD_TYPES)
        endian, word_order = rng.choice(ORDERS)
        length = rng.randrange(1, 5) if dt in ("string", "binary") else None
        scale = rng.choice(SCALES) if dt in codec.FMT else None
        v = var(f"t{i}", "d", rng.choice(["holding", "input"]), addr, dt, length, endian=endian, word_order=word_order)
        if scale is not None:
            v = Variable(v.tag, v.driver_id, v.access, v.address, v.datatype, endian, word_order, compile_scale(scale))
        out.append(v)
        # next tag: right after this one, after a gap, or (overlap) starting inside this one
        addr = v.address.end + rng.choice([0, 0, 0, 1, 3])
        if overlap and rng.random() < 0.4:
            addr = v.address.addr + rng.randrange(0, v.address.len)
    return out


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("overlap", [False, True])
def test_block_decoder_matches_per_tag_decode(seed: int, overlap: bool) -> None:
    rng = random.Random(seed * 2 + overlap)
    variables = random_variables(rng, rng.randrange(1, 40), overlap)
    for read in Planner(tcp_endpoint(502), max_regs=125).plan(tuple(variables)):
        for _ in range(5):
            regs = [rng.choice([0, 0xFFFF, 0x7FC0, 0x8000, 0x0041, rng.randrange(0x10000)]) for _ in range(read.count)]
            data = struct.pack(f">{read.count}H", *regs)
            assert (
                pdu.parse(pdu.read_request(read.fc, read.start, read.count), bytes([read.fc, len(data)]) + data) == regs
            )
            got = read.decoder.block(data, 1234).frames()
            want = [reference(v, regs, read.start, 1234) for v in read.variables]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert same(g, w), (read.variables[got.index(g)], regs, g, w)


@pytest.mark.parametrize("dt", [t for t in WORD_TYPES if t not in ("string", "binary")])
@pytest.mark.parametrize(("endian", "word_order"), ORDERS)
def test_every_datatype_and_order_exhaustively_on_random_words(dt: str, endian: str, word_order: str) -> None:
    rng = random.Random(f"{dt}{endian}{word_order}")
    v = var("t", "d", "holding", 3, dt, endian=endian, word_order=word_order)
    decoder = codec.BlockDecoder(0, [v], bits=False)
    for _ in range(500):
        regs = [rng.randrange(0x10000) for _ in range(3 + v.address.len)]
        got = decoder.block(struct.pack(f">{len(regs)}H", *regs), 0).frames()[0]
        assert same(got, reference(v, regs, 0, 0))


def test_bits_and_the_read_order_of_frames() -> None:
    vs = tuple(var(f"c{i}", "d", "coil", 2 * i, "bool") for i in range(5))
    [read] = Planner(tcp_endpoint(502), max_regs=125).plan(vs)
    bits = [bool(i % 3) for i in range(read.count)]
    frames = read.decoder.block(bits, 7).frames()
    assert [(f.tag, f.value, f.q) for f in frames] == [(v.tag, bits[2 * i], GOOD) for i, v in enumerate(vs)]
