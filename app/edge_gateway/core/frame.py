"""The Frame: the unit of data that flows from a line thread through the bus and WAL to the uplink."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

Value = bool | int | float | str | bytes | None

GOOD = "good"


def bad(reason: str) -> str:
    """Quality string of a failed read: `bad:timeout`, `bad:exception_2`, `bad:crc`, `bad:disconnected`."""
    return f"bad:{reason}"


class Kind(enum.IntEnum):
    DATA = 0
    CMD = 1  # a cloud command, logged for audit and never replayed


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Frame:
    seq: int  # assigned by the FrameBus; strictly increasing, never reused, survives restarts
    ts: int  # ms since the epoch, UTC, taken when the value was acquired
    tag: str
    value: Value
    q: str = GOOD  # "good" or "bad:<reason>"
    kind: Kind = Kind.DATA
    meta: dict[str, object] | None = None  # optional context (MQTT source topic/qos/retain/dup, dup=possible)
