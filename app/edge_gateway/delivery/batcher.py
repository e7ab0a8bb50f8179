"""Committed frames → batches that close at `batch` frames, `max_bytes`, or `max_interval` age.

A batch also covers the seq range it was read from, including frames that are not sent (cloud
commands, Kind.CMD: they are in the WAL for audit only). The ack cursor moves by that range, so
skipped frames are acknowledged together with their neighbours and never hold the cursor back.
The range is published as the `cover` user property: a consumer checks that each batch's cover
starts right after the previous one ends, and so tells a skipped command from a lost frame. A
batch of skipped frames only is acknowledged without being sent; its range is carried into the
cover of the next batch that is sent.

`max_bytes` bounds the uncompressed JSON array; each frame is counted with room for the
`"dup":"possible"` marker, so a batch re-encoded after a QoS downgrade still fits.
Age is measured from when the batch opened on this gateway, not from frame timestamps: after an
outage the backlog is old, and closing every backlog batch at one frame would make it crawl.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_gateway.core.frame import Frame, Kind
from edge_gateway.delivery.codec import frame_json

DUP_MARK = len(',"dup":"possible"')
_ARRAY = 2  # the brackets


@dataclass
class Batch:
    first: int  # first seq covered (sent or skipped)
    last: int  # last seq covered
    frames: list[Frame] = field(default_factory=list)  # the frames to send
    parts: list[str] = field(default_factory=list)  # their JSON, without dup marks
    size: int = _ARRAY  # bytes of the JSON array, dup marks reserved
    opened: float = 0.0
    cover_first: int = 0  # first seq of the published `cover` range (≤ first: carries skipped-only batches)

    @property
    def count(self) -> int:
        return len(self.frames)

    @property
    def seq_first(self) -> int:
        return self.frames[0].seq

    @property
    def seq_last(self) -> int:
        return self.frames[-1].seq


class Batcher:
    def __init__(
        self, max_frames: int, max_bytes: int, max_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max_bytes
        self.max_interval = max_interval
        self._clock = clock
        self._open: Batch | None = None
        self._carry: int | None = None  # first seq of skipped-only batches not yet covered by a sent one

    @property
    def pending(self) -> int:
        """Frames in the open batch."""
        return self._open.count if self._open is not None else 0

    def add(self, frames: list[Frame]) -> list[Batch]:
        """Add frames in seq order; returns the batches they closed."""
        closed: list[Batch] = []
        now = self._clock()
        for f in frames:
            b = self._open
            if f.kind is Kind.CMD:
                if b is None:
                    b = self._open = Batch(f.seq, f.seq, opened=now)
                b.last = f.seq
                continue
            part = frame_json(f)
            n = len(part) + DUP_MARK + 1  # + the comma
            if b is not None and b.count and b.size + n > self.max_bytes:
                closed.append(b)
                b = None
            if b is None:
                b = self._open = Batch(f.seq, f.seq, opened=now)
            if not b.count:
                b.cover_first = b.first if self._carry is None else self._carry
                self._carry = None
            b.frames.append(f)
            b.parts.append(part)
            b.size += n
            b.last = f.seq
            if b.count >= self.max_frames or b.size >= self.max_bytes:
                closed.append(b)
                self._open = None
        return closed

    def due_in(self) -> float | None:
        """Seconds until the open batch reaches max_interval (0 = due now); None when none is open."""
        b = self._open
        if b is None:
            return None
        if not b.count:
            return 0.0  # only skipped frames: nothing to wait for, let the cursor move
        return max(0.0, b.opened + self.max_interval - self._clock())

    def take_due(self) -> Batch | None:
        due = self.due_in()
        if due is None or due > 0:
            return None
        b, self._open = self._open, None
        if b is not None and not b.count and self._carry is None:
            self._carry = b.first
        return b

    def clear(self) -> None:
        self._open = None
        self._carry = None
