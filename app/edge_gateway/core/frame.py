"""The Frame: the unit of data that flows from a line thread through the bus and WAL to the uplink, and
the FrameBlock: the frames of one read, carried as one object as far as the WAL writer."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count, repeat

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


@dataclass(slots=True, eq=False)
class FrameBlock:
    """The frames of one read in one object: frame i is `tags[i]` = `values[i]`, all acquired at `ts`,
    data frames without meta. A Modbus line publishes one per read (`FrameBus.publish_blocks`) instead of
    a Frame per register, so the bus and the WAL writer work per read, not per frame (issue 19); the
    frames stored are the ones `frames()` gives, byte for byte."""

    seq: int  # of frame 0, assigned by the FrameBus; frame i has seq + i
    ts: int
    tags: tuple[str, ...]  # built once per read plan: the WAL writer keeps their JSON per tuple
    values: list[Value]
    q: str | list[str] = GOOD  # the quality of every frame, or one per frame

    def __post_init__(self) -> None:
        if type(self.tags) is not tuple:
            self.tags = tuple(self.tags)
        n = len(self.values)
        if len(self.tags) != n or (not isinstance(self.q, str) and len(self.q) != n):
            raise ValueError(f"block of {len(self.tags)} tags, {n} values, {len(self.q)} qualities")

    def __len__(self) -> int:
        return len(self.values)

    def frames(self) -> list[Frame]:
        qs = repeat(self.q) if isinstance(self.q, str) else self.q
        return list(map(Frame, count(self.seq), repeat(self.ts), self.tags, self.values, qs))


def frames_of(items: Iterable[Frame | FrameBlock]) -> list[Frame]:
    """Frames and blocks (what `FrameBus.drain` gives) as frames."""
    out: list[Frame] = []
    for it in items:
        if type(it) is FrameBlock:
            out += it.frames()
        else:
            out.append(it)  # type: ignore[arg-type]
    return out
