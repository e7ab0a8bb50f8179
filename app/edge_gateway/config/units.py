"""Parsing of the human units used in the YAML tables: durations, sizes, rates.

Kept apart from the loader so the schema patterns and the parser agree on one grammar: the
`$defs` duration/size/rate of the shipped JSON Schemas use exactly these pattern strings
(a test holds them equal), so what `edge-cfg lint` accepts is what the parser reads.
"""

from __future__ import annotations

import re

# Written in the regex subset that Python and JSON Schema (ECMA 262) read alike.
DURATION_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$")  # group 2: the unit
SIZE_RE = re.compile(r"^[0-9]+(B|KiB|MiB|GiB|TiB|K|M|G|T|KB|MB|GB|TB)?$")  # group 1: the unit
RATE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?pps$")

_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_B = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    # Bare K/M/G (as in `gc --keep-bytes 512M`) are binary too: this is a disk budget, not a data rate.
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def parse_duration(text: str | int | float) -> float:
    """`500ms` → 0.5 (seconds). A bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    m = DURATION_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 500ms, 1s, 2m, 1h, 1d)")
    unit = m.group(2)
    return float(text[: -len(unit)]) * _DURATION_S[unit]


def parse_size(text: str | int) -> int:
    """`16MiB` → 16777216 (bytes). A bare integer is bytes."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        return text
    text = text.strip()
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. 4096, 512KiB, 16MiB, 4GiB)")
    unit = m.group(1)
    return int(text[: len(text) - len(unit or "")]) * _SIZE_B[unit]


def parse_rate(text: str | int | float) -> float:
    """`200pps` → 200.0 (requests per second)."""
    if isinstance(text, bool):
        raise ValueError(f"not a rate: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if not RATE_RE.match(text):
        raise ValueError(f"not a rate: {text!r} (expected e.g. 50pps)")
    return float(text[: -len("pps")])
