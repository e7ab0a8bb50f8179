"""S7 addresses and the byte layout of each datatype, the way an S7 CPU stores it (big-endian).

REAL = float32, LREAL = float64, INT = int16, DINT = int32, WORD/DWORD = uint16/uint32,
LINT/ULINT = int64/uint64, BOOL = one bit of a byte, STRING = max-length byte, actual-length byte,
then the characters (`size` counts the two header bytes)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from edge_gateway.core.datatypes import FLOAT32_MAX, INT_RANGES
from edge_gateway.core.frame import Value

AREAS = ("DB", "M", "I", "Q")
FIXED = {"uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "uint64": 8, "int64": 8, "float32": 4, "float64": 8}
FORMAT = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "uint64": ">Q", "int64": ">q",
          "float32": ">f", "float64": ">d"}  # fmt: skip
STRING_MAX = 256  # 254 characters + 2 header bytes


@dataclass(frozen=True)
class S7Address:
    area: str  # DB | M | I | Q
    db: int  # 0 outside DB
    start: int  # byte offset
    size: int  # bytes on the wire
    bit: int | None = None  # bools only

    @property
    def end(self) -> int:
        return self.start + self.size

    def describe(self) -> str:
        where = f"DB{self.db}.DBB{self.start}" if self.area == "DB" else f"{self.area}B{self.start}"
        return where + (f".{self.bit}" if self.bit is not None else "")


def build(datatype: str, raw: dict[str, Any]) -> S7Address:
    """A validated variables.yml `address`; raises ValueError with the reason (the loader adds file:line)."""
    area = raw["area"]
    db = raw.get("db")
    if area == "DB" and db is None:
        raise ValueError("area DB needs `db` (the data block number)")
    if area != "DB" and db is not None:
        raise ValueError(f"`db` is only for area DB, not {area}")
    start, size, bit = raw["start"], raw.get("size"), raw.get("bit")
    if datatype == "bool":
        if bit is None:
            raise ValueError("a bool needs `bit` (0..7)")
        if size not in (None, 1):
            raise ValueError(f"a bool is one bit of one byte: size {size} (omit it or give 1)")
        return S7Address(area, db or 0, start, 1, bit)
    if bit is not None:
        raise ValueError(f"`bit` is only for datatype bool, not {datatype}")
    if datatype in FIXED:
        want = FIXED[datatype]
        if size not in (None, want):
            raise ValueError(f"datatype {datatype} is {want} bytes in an S7 CPU, not size {size}")
        return S7Address(area, db or 0, start, want)
    if datatype == "string":
        if size is None or not 3 <= size <= STRING_MAX:
            raise ValueError(f"an S7 STRING needs size 3..{STRING_MAX} (2 header bytes + characters)")
        return S7Address(area, db or 0, start, size)
    if datatype == "binary":
        if size is None:
            raise ValueError("binary needs `size` (bytes)")
        return S7Address(area, db or 0, start, size)
    raise ValueError(f"datatype {datatype} is not supported by the S7 driver")


def decode(datatype: str, addr: S7Address, data: bytes | bytearray) -> Value:
    """The value of `addr` from `data` (exactly its bytes)."""
    if datatype == "bool":
        return bool(data[0] >> (addr.bit or 0) & 1)
    if datatype in FORMAT:
        v = struct.unpack(FORMAT[datatype], bytes(data))[0]
        return float(v) if datatype.startswith("float") else int(v)
    if datatype == "string":
        n = min(data[1], data[0], len(data) - 2)
        return bytes(data[2 : 2 + n]).decode("latin-1")
    return bytes(data)


def encode(datatype: str, addr: S7Address, value: Value) -> bytes:
    """The bytes to write for `value` (bools: the single bit, as 0/1); raises ValueError if it does not fit."""
    if datatype == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"a bool, please (got {value!r})")
        return bytes([1 if value else 0])
    if datatype in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"an integer, please (got {value!r})")
        lo, hi = INT_RANGES[datatype]
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range for {datatype} ({lo}..{hi})")
        return struct.pack(FORMAT[datatype], value)
    if datatype in ("float32", "float64"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"a finite number, please (got {value!r})")
        if datatype == "float32" and abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value} does not fit a float32")
        return struct.pack(FORMAT[datatype], float(value))
    if datatype == "string":
        if not isinstance(value, str):
            raise ValueError(f"a string, please (got {value!r})")
        raw = value.encode("latin-1", errors="strict") if value.isascii() else b""
        if not value.isascii():
            raise ValueError("an S7 STRING holds single-byte characters only")
        cap = addr.size - 2
        if len(raw) > cap:
            raise ValueError(f"{len(raw)} characters do not fit STRING[{cap}]")
        return bytes([cap, len(raw)]) + raw + bytes(cap - len(raw))
    raise ValueError(f"datatype {datatype} is not writable through the S7 driver")
