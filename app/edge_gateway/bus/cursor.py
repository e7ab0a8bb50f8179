"""A consumer's view of the WAL: a read position, and an ack position that survives restarts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_gateway.bus.record import Run
from edge_gateway.core.frame import Frame

if TYPE_CHECKING:
    from edge_gateway.bus.wal import Wal


@dataclass
class ReadHint:
    """Where a sequential reader stopped in the files: the segment and byte offset of the next record,
    the seq that record should start with (a jump means frames were lost to damage), and the frames
    of the last record it decoded but has not returned yet. A record holds what the
    writer drained at once (often thousands of frames): decoding it again for every read would make
    catching up on a backlog quadratic."""

    segment: int = 0
    offset: int = 0
    seq: int = 0
    held: Run | None = None


class Cursor:
    """`read` moves the read position; `ack` moves the durable position; `rewind` goes back
    to the first unacked frame (after a reconnect, to resend what was not acknowledged)."""

    def __init__(self, wal: Wal, name: str, acked: int) -> None:
        self._wal = wal
        self.name = name
        self._pos = acked + 1
        self._hint = ReadHint()

    @property
    def acked(self) -> int:
        return self._wal.acks.get(self.name, 0)

    @property
    def position(self) -> int:
        """The seq the next read starts at."""
        return self._pos

    @property
    def lag(self) -> int:
        return max(0, self._wal.committed_seq - self.acked)

    def read(self, max_frames: int, timeout: float) -> list[Frame]:
        """Committed frames from the read position on, waiting up to `timeout` s for one."""
        return [f for r in self.read_runs(max_frames, timeout) for f in r.frames()]

    def read_runs(self, max_frames: int, timeout: float) -> list[Run]:
        """The same frames as `read`, in their stored form (record.Run): what the uplink sends."""
        runs = self._wal.read_runs(self._pos, max_frames, self._hint)
        if not runs and timeout > 0 and self._wal.wait_committed(self._pos - 1, timeout):
            runs = self._wal.read_runs(self._pos, max_frames, self._hint)
        if not runs and self._pos <= self._wal.committed_seq:
            # Frames from pos on are gone (dropped by full_policy or corrupt): skip to what exists.
            first = self._wal.first_seq()
            if first > self._pos:
                self._pos = first
                runs = self._wal.read_runs(self._pos, max_frames, self._hint)
        if runs:
            self._pos = runs[-1].last_seq + 1
        return runs

    def rewind(self) -> None:
        self._pos = self.acked + 1
        self._hint = ReadHint()

    def seek(self, seq: int) -> None:
        self._pos = max(1, seq)
        self._hint = ReadHint()

    def ack(self, seq: int) -> None:
        self._wal.ack(self.name, seq)
