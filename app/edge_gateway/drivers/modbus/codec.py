"""Registers ↔ values for every datatype, in both byte orders and both word orders.

`endian` is the byte order inside one 16-bit register; `word_order` the order of registers
in a 32/64-bit value (big = ABCD: most significant register first; little = CDAB). Strings
and binary keep register order and honour only `endian`. Scale is applied after decoding;
writes go through the scale's inverse.
"""

from __future__ import annotations

import array
import math
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_gateway.core.datatypes import INT_RANGES
from edge_gateway.core.frame import GOOD, FrameBlock, Value, bad
from edge_gateway.drivers.modbus.model import Variable

FMT = {
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "uint64": ">Q",
    "int64": ">q",
    "float32": ">f",
    "float64": ">d",
}


class EncodeError(ValueError):
    pass


def _to_bytes(regs: list[int], var: Variable, numeric: bool) -> bytes:
    if numeric and var.word_order == "little":
        regs = regs[::-1]
    raw = struct.pack(f">{len(regs)}H", *regs)
    if var.endian == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def _to_regs(raw: bytes, var: Variable, numeric: bool) -> list[int]:
    if var.endian == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    regs = list(struct.unpack(f">{len(raw) // 2}H", raw))
    return regs[::-1] if numeric and var.word_order == "little" else regs


def decode_raw(var: Variable, regs: list[int] | list[bool]) -> Value:
    """The device's value before scaling."""
    dt = var.datatype
    if var.address.type in ("coil", "discrete"):
        return bool(regs[0])
    words = [int(r) for r in regs]
    if dt == "bool":
        return words[0] != 0
    if dt in FMT:
        return struct.unpack(FMT[dt], _to_bytes(words, var, True))[0]  # type: ignore[no-any-return]
    raw = _to_bytes(words, var, False)
    if dt == "string":
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    return raw  # binary


def decode(var: Variable, regs: list[int] | list[bool]) -> Value:
    value = decode_raw(var, regs)
    if var.scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
        value = var.scale(value)  # ArithmeticError → the caller marks the frame bad:scale
    return value


def encode(var: Variable, value: Value) -> list[int] | bool:
    """Engineering value → registers (or a coil state), refusing what does not fit."""
    dt = var.datatype
    if var.address.type == "coil" or dt == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise EncodeError(f"{var.tag} is bool: value must be true/false or 0/1, not {value!r}")
        if var.address.type == "coil":
            return bool(value)
        return [1 if value else 0]
    if dt in FMT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise EncodeError(f"{var.tag} is {dt}: value must be a finite number, not {value!r}")
        raw: float = value
        if var.scale is not None:
            raw = var.scale.inverse(float(value))  # ExprError (a ValueError) for non-affine scales
        if dt in INT_RANGES:
            n = round(raw)
            if abs(raw - n) > 1e-6 * max(1.0, abs(raw)):
                raise EncodeError(f"{var.tag}: {value!r} is not representable as {dt} (raw {raw!r})")
            lo, hi = INT_RANGES[dt]
            if not lo <= n <= hi:
                raise EncodeError(f"{var.tag}: {value!r} is out of range for {dt} ({lo}..{hi})")
            packed = struct.pack(FMT[dt], n)
        else:
            try:
                packed = struct.pack(FMT[dt], raw)
            except OverflowError:
                raise EncodeError(f"{var.tag}: {value!r} is out of range for {dt}") from None
        return _to_regs(packed, var, True)
    n_bytes = 2 * var.address.len
    if dt == "string":
        if not isinstance(value, str) or not value.isascii():
            raise EncodeError(f"{var.tag} is an ASCII string, not {value!r}")
        data = value.encode()
    else:
        if not isinstance(value, bytes):
            raise EncodeError(f"{var.tag} is binary: value must be bytes")
        data = value
    if len(data) > n_bytes:
        raise EncodeError(f"{var.tag}: {len(data)} bytes do not fit {var.address.len} registers")
    return _to_regs(data.ljust(n_bytes, b"\0"), var, False)


# -- block decoding: one read → its frames, one struct call per layout --------------------------------------------
#
# The answer to a register read is the block's bytes, big-endian per register. Every byte/word order is
# one of four views of those bytes: as they are or byte-swapped per register (array.byteswap, one C call),
# read with a big- or little-endian struct format:
#   endian big,    word big    (ABCD) → as is,    '>'
#   endian little, word big    (BADC) → swapped,  '>'
#   endian big,    word little (CDAB) → swapped,  '<'
#   endian little, word little (DCBA) → as is,    '<'
# (16-bit values agree under either word order; strings and binary ignore it and use '>' with 's'.)
# Each view is decoded by one precompiled struct.Struct whose pad bytes ('x') skip what the view does not
# own, so a read costs one unpack per view in use (one for a device with one byte order) and one FrameBlock
# (core.frame: the read's frames in one object, no Frame per tag); only tags with a scale, string, binary or
# holding-register bool get a per-tag conversion.

_Convert = Callable[[Any], Value]
BAD_SCALE = bad("scale")
BAD_DECODE = bad("decode")
_CODE = {"uint16": "H", "int16": "h", "uint32": "I", "int32": "i", "uint64": "Q", "int64": "q"}
_CODE |= {"float32": "f", "float64": "d", "bool": "H"}


def _string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _nonzero(word: int) -> bool:
    return word != 0


def _item(var: Variable) -> tuple[tuple[bool, str], str, _Convert | None]:
    """How `var` is read from the block: its view (byte-swapped per register?, struct byte order), its
    struct code, and what turns the struct's item into the tag's value (None: the item is the value)."""
    dt, n_bytes = var.datatype, 2 * var.address.len
    little_bytes = var.endian == "little"
    code = _CODE.get(dt)
    if code is not None and struct.calcsize(code) != n_bytes:  # only a hand-built Variable gets here
        return (False, ">"), f"{n_bytes}s", lambda raw: decode(var, list(struct.unpack(f">{n_bytes // 2}H", raw)))
    if dt not in FMT:  # bool, string, binary: register order kept, only `endian` honoured
        convert = _nonzero if dt == "bool" else _string if dt == "string" else None
        return (little_bytes, ">"), code or f"{n_bytes}s", convert
    little_words = var.word_order == "little"
    return (little_bytes != little_words, "<" if little_words else ">"), code or "", var.scale


@dataclass(frozen=True, slots=True)
class _Layout:
    """One struct over one view of the block, and the positions in the read of the tags it yields."""

    swapped: bool
    codec: struct.Struct
    offset: int  # bytes
    slots: tuple[int, ...]


class BlockDecoder:
    """Decodes the answer to one planned read into its FrameBlock. Built once per plan (planner.Read)."""

    __slots__ = ("bits", "tags", "offsets", "converts", "layouts", "needs_swap", "plain")

    def __init__(self, start: int, variables: Sequence[Variable], bits: bool) -> None:
        self.bits = bits
        self.tags = tuple(sys.intern(v.tag) for v in variables)
        self.offsets = tuple(v.address.addr - start for v in variables)
        items = [_item(v) for v in variables] if not bits else []
        self.converts = tuple(it[2] for it in items) if items else (None,) * len(variables)
        self.plain = all(c is None for c in self.converts)
        layouts: list[_Layout] = []
        if not bits:
            # Per view, tags in address order; a tag starting inside the previous one opens another struct.
            open_: dict[tuple[bool, str], tuple[int, int, list[str], list[int]]] = {}  # start, cursor, fmt, slots

            def close(key: tuple[bool, str]) -> None:
                first, _, fmt, slots = open_.pop(key)
                layouts.append(_Layout(key[0], struct.Struct(key[1] + "".join(fmt)), first, tuple(slots)))

            for i, (v, (key, code, _)) in enumerate(zip(variables, items, strict=True)):
                at = 2 * self.offsets[i]
                if key in open_ and at < open_[key][1]:
                    close(key)
                if key not in open_:
                    open_[key] = (at, at, [], [])
                first, cursor, fmt, slots = open_[key]
                if at > cursor:
                    fmt.append(f"{at - cursor}x")
                fmt.append(code)
                slots.append(i)
                open_[key] = (first, at + 2 * v.address.len, fmt, slots)
            for key in list(open_):
                close(key)
        self.layouts = tuple(layouts)
        self.needs_swap = any(lay.swapped for lay in layouts)

    def values(self, data: bytes | Sequence[bool]) -> list[Value]:
        """The raw items of every tag, in the read's order (before conversion)."""
        if self.bits:
            return [bool(data[o]) for o in self.offsets]  # type: ignore[index]
        assert isinstance(data, bytes | bytearray)
        swapped = b""
        if self.needs_swap:
            regs = array.array("H", data)
            regs.byteswap()
            swapped = regs.tobytes()
        if len(self.layouts) == 1:
            lay = self.layouts[0]
            return list(lay.codec.unpack_from(swapped if lay.swapped else data, lay.offset))
        out: list[Value] = [None] * len(self.tags)
        for lay in self.layouts:
            for slot, item in zip(
                lay.slots, lay.codec.unpack_from(swapped if lay.swapped else data, lay.offset), strict=True
            ):
                out[slot] = item
        return out

    def block(self, data: bytes | Sequence[bool], ts: int) -> FrameBlock:
        """The read's frames as one block: a value per tag, or bad:scale / bad:decode (value None) where
        the tag's conversion fails for this value."""
        items = self.values(data)
        if self.plain:
            return FrameBlock(0, ts, self.tags, items)
        values: list[Value] = []
        qs: list[str] = []
        for convert, item in zip(self.converts, items, strict=True):
            q = GOOD
            if convert is not None:
                try:
                    item = convert(item)
                except ArithmeticError:
                    item, q = None, BAD_SCALE
                except (ValueError, struct.error):
                    item, q = None, BAD_DECODE
            values.append(item)
            qs.append(q)
        return FrameBlock(0, ts, self.tags, values, GOOD if qs.count(GOOD) == len(qs) else qs)
