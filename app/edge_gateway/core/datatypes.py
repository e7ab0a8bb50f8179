"""The one datatype table: every tag datatype, its size in 16-bit registers (2 bytes each), the
range of the integer types and the largest finite float32. Drivers, the MQTT-source payload parser
and the command checks all read it from here."""

from __future__ import annotations

from typing import Literal, get_args

Datatype = Literal[
    "bool",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
    "string",
    "binary",
    "float",  # = float32, as the OPC UA documents write it
    "double",  # = float64
    "datetime",  # OPC UA DateTime: ms since the epoch, UTC
]
DATATYPES: tuple[str, ...] = get_args(Datatype)  # the names, in order, for schemas and messages

# 16-bit words a datatype occupies; None = variable length (string/binary: the tag gives it).
SIZE_WORDS: dict[str, int | None] = {
    "bool": 1,
    "uint16": 1,
    "int16": 1,
    "uint32": 2,
    "int32": 2,
    "float32": 2,
    "uint64": 4,
    "int64": 4,
    "float64": 4,
    "string": None,
    "binary": None,
    "float": 2,
    "double": 4,
    "datetime": None,
}

INT_RANGES: dict[str, tuple[int, int]] = {
    "uint16": (0, 0xFFFF),
    "int16": (-0x8000, 0x7FFF),
    "uint32": (0, 0xFFFF_FFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "int64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}
FLOAT32_MAX = 3.4028234663852886e38
NUMERIC = frozenset(INT_RANGES) | {"float32", "float64"}
