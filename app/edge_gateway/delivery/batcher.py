"""Committed frames → batches that close at `batch` frames, `max_bytes`, or `max_interval` age.

A batch also covers the seq range it was read from, including frames that are not sent (cloud
commands, Kind.CMD: they are in the WAL for audit only). The ack cursor moves by that range, so
skipped frames are acknowledged together with their neighbours and never hold the cursor back.
The range is published as the `cover` user property: a consumer checks that each batch's cover
starts right after the previous one ends, and so tells a skipped command from a lost frame. A
batch of skipped frames only is acknowledged without being sent; its range is carried into the
cover of the next batch that is sent.

Frames come as runs of WAL blocks (bus.record): each frame's JSON was made once, by the WAL writer,
and consecutive data frames of a block are one slice of its text, so a batch is a few slices joined
(`json()`), whatever its size; sizes come from the block's offsets, not from the frames one by one.

`max_bytes` bounds the uncompressed JSON array; each frame is counted with room for the
`"dup":"possible"` marker, so a batch re-encoded after a QoS downgrade still fits.
Age is measured from when the batch opened on this gateway, not from frame timestamps: after an
outage the backlog is old, and closing every backlog batch at one frame would make it crawl.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_gateway.bus.record import Block, Run, block_of
from edge_gateway.core.frame import Frame

DUP_MARK = len(',"dup":"possible"')
_ARRAY = 2  # the brackets


@dataclass
class Batch:
    first: int  # first seq covered (sent or skipped)
    last: int  # last seq covered
    runs: list[Run] = field(default_factory=list)  # the frames to send (data frames only)
    count: int = 0  # frames to send
    size: int = _ARRAY  # bytes of the JSON array, dup marks reserved
    opened: float = 0.0
    cover_first: int = 0  # first seq of the published `cover` range (≤ first: carries skipped-only batches)
    dup_marked: bool = False  # a frame's own meta says dup=possible

    @property
    def seq_first(self) -> int:
        return self.runs[0].first_seq

    @property
    def seq_last(self) -> int:
        return self.runs[-1].last_seq

    def json(self) -> bytes:
        """The JSON array, as stored (no dup marks)."""
        return b"[" + b",".join([r.block.json(r.lo, r.hi) for r in self.runs]) + b"]"

    @property
    def frames(self) -> list[Frame]:
        """The frames to send, decoded (a QoS downgrade re-encodes them; tests look at them)."""
        return [f for r in self.runs for f in r.frames()]

    @property
    def parts(self) -> list[str]:
        """Each frame's JSON."""
        return [r.block.json(i, i + 1).decode("ascii") for r in self.runs for i in range(r.lo, r.hi)]


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
        """Add frames with consecutive seqs (encoded here: tests, benchmarks); returns the batches they closed."""
        if not frames:
            return []
        block = block_of(frames)
        return self.add_runs([Run(block, 0, block.count)])

    def add_runs(self, runs: list[Run]) -> list[Batch]:
        """Add runs in seq order; returns the batches they closed."""
        closed: list[Batch] = []
        now = self._clock()
        for r in runs:
            block, i, hi = r.block, r.lo, r.hi
            cmds = block.cmds
            while i < hi:
                k = bisect.bisect_left(cmds, i)
                if k < len(cmds) and cmds[k] == i:  # a command: covered, not sent
                    b = self._open
                    if b is None:
                        b = self._open = Batch(block.first_seq + i, 0, opened=now)
                    b.last = block.first_seq + i
                    i += 1
                    continue
                j = cmds[k] if k < len(cmds) and cmds[k] < hi else hi  # data frames i..j-1
                while i < j:
                    i = self._fill(block, i, j, now, closed)
        return closed

    def _fill(self, block: Block, i: int, j: int, now: float, closed: list[Batch]) -> int:
        """Put as many of the data frames i..j-1 into the open batch as fit; returns the next frame."""
        b = self._open
        if b is None:
            b = self._open = Batch(block.first_seq + i, 0, opened=now)
        if not b.count:
            b.cover_first = b.first if self._carry is None else self._carry
            self._carry = None
        start = block.start(i)
        ends = block.ends

        def size(n: int) -> int:  # frames i..i+n-1 with their commas and dup marks
            return ends[i + n - 1] + 1 - start + n * DUP_MARK

        room = self.max_bytes - b.size
        n = min(j - i, self.max_frames - b.count)
        if size(n) > room:  # the common case fits whole; else the most that fit
            n = bisect.bisect_right(range(1, n + 1), room, key=size)
            if n == 0 and b.count:  # not even one more: this batch is done
                closed.append(b)
                self._open = None
                return i
            n = max(n, 1)  # a frame larger than max_bytes goes alone
        b.runs.append(Run(block, i, i + n))
        b.count += n
        b.size += size(n)
        b.last = block.first_seq + i + n - 1
        if block.dups and not b.dup_marked:
            k = bisect.bisect_left(block.dups, i)
            b.dup_marked = k < len(block.dups) and block.dups[k] < i + n
        if b.count >= self.max_frames or b.size >= self.max_bytes:
            closed.append(b)
            self._open = None
        return i + n

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
