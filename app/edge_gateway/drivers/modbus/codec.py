"""Registers ↔ values for every datatype, in both byte orders and both word orders.

`endian` is the byte order inside one 16-bit register; `word_order` the order of registers
in a 32/64-bit value (big = ABCD: most significant register first; little = CDAB). Strings
and binary keep register order and honour only `endian`. Scale is applied after decoding;
writes go through the scale's inverse.
"""

from __future__ import annotations

import math
import struct

from edge_gateway.core.datatypes import INT_RANGES
from edge_gateway.core.frame import Value
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
