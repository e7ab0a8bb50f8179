"""FrameBus: the bounded in-memory hand-off between line threads and the WAL writer.

Producers (line threads) never block here: `publish` appends under a short lock and
returns. Seq numbers are assigned here, under the same lock, so deque order is seq order
and the WAL writer can append without sorting. The deque holds each publish's frames as one
list (a poll cycle), so a frame costs no deque operation of its own; `drain` splits a list
only when it stops inside one. A Modbus line publishes FrameBlocks (core.frame: one per read)
instead: a block gets its seq range in one step, travels whole (never split: a drain may take
up to one block more than asked) and is encoded by the WAL writer in one pass. The ring's
capacity, `ring_full` drops and the pause marks count frames either way. There is one drainer, the
WAL writer; a publish wakes it only when enough frames wait (`drain(wake_at=…)`), not every time.

Flow control has two sources, combined into one `paused` state with hysteresis:
  * the ring: above `pause_hi × capacity` it pauses; it resumes only below
    `resume_lo × capacity` (one Pause and one Resume per episode, never a flutter);
  * a hold set by the WAL (`full_policy: pause`) via `hold()`/`release()`.
Producers read `paused` before each cycle and skip the cycle (counting it); listeners
registered with `on_flow` hear each transition once. A publish into a completely full ring
is refused and counted as `framebus_drop_total{reason="ring_full"}` — never silent.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from operator import attrgetter

from edge_gateway.bus import metrics
from edge_gateway.config.model import BusCfg
from edge_gateway.core.frame import Frame, FrameBlock, Kind

FlowListener = Callable[[bool], None]  # called with True on Pause, False on Resume
_kind = attrgetter("kind")


class FrameBus:
    def __init__(self, cfg: BusCfg, next_seq: int = 1) -> None:
        self.capacity = cfg.capacity
        self._hi = max(1, int(cfg.capacity * cfg.pause_hi))
        self._lo = int(cfg.capacity * cfg.resume_lo)
        self._ring: deque[list[Frame] | FrameBlock] = deque()  # one list per publish or a block, in seq order
        self._used = 0  # frames in the ring
        self._cond = threading.Condition(threading.Lock())
        self._wake_at = 1  # frames in the ring that wake the drainer early (see `drain`)
        self._next_seq = next_seq
        self._ring_paused = False
        self._held = False
        self._paused = False
        self._listeners: list[FlowListener] = []
        self._publish_data = metrics.PUBLISH.labels(kind="data")
        self._publish_cmd = metrics.PUBLISH.labels(kind="cmd")
        self._drop_full = metrics.DROP.labels(reason="ring_full")

    # -- producers ---------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def publish(self, frames: Sequence[Frame]) -> int:
        """Assign seqs and enqueue; returns how many were accepted (the rest are counted as dropped)."""
        with self._cond:
            room = self.capacity - self._used
            accepted = list(frames) if len(frames) <= room else list(frames[:room])
            n = len(accepted)
            if n:
                for seq, f in enumerate(accepted, self._next_seq):
                    f.seq = seq
                self._next_seq += n
                self._ring.append(accepted)
                self._used += n
                if self._used >= self._wake_at:
                    self._cond.notify()
            used = self._used
            changed = self._update_flow_locked(used)
        cmds = list(map(_kind, accepted)).count(Kind.CMD) if n else 0
        self._published(n - cmds, cmds, len(frames) - n, used, changed)
        return n

    def publish_blocks(self, blocks: Sequence[FrameBlock]) -> int:
        """`publish` for blocks: each gets its seq range and is enqueued whole. Returns the frames accepted;
        into a ring without room for a whole block, that block and the ones after it are dropped (counted)."""
        with self._cond:
            room = self.capacity - self._used
            seq = self._next_seq
            n = 0
            for b in blocks:
                k = len(b.values)
                if n + k > room:
                    break
                b.seq = seq + n
                n += k
                self._ring.append(b)
            if n:
                self._next_seq += n
                self._used += n
                if self._used >= self._wake_at:
                    self._cond.notify()
            used = self._used
            changed = self._update_flow_locked(used)
        self._published(n, 0, sum(map(len, blocks)) - n, used, changed)
        return n

    def _published(self, data: int, cmds: int, dropped: int, used: int, changed: bool | None) -> None:
        """A publish's accounting, after the lock: counters, ring use, and a flow change heard once."""
        self._publish_data.inc(data)
        if cmds:
            self._publish_cmd.inc(cmds)
        if dropped:
            self._drop_full.inc(dropped)
        metrics.RING_USED.set(used)
        if changed is not None:
            self._notify(changed)

    # -- the WAL writer ----------------------------------------------------------------------------
    def drain(self, max_frames: int, timeout: float, wake_at: int = 1) -> list[Frame | FrameBlock]:
        """Take up to `max_frames` frames in seq order (a block whole, so up to one block more), waiting up
        to `timeout` s until `wake_at` frames are in the ring, then taking what is there. The WAL writer
        waits for a drain's worth: it commits on its own clock, so being woken by every poll would only
        cost a thread switch per publish (issue 19). `wake_at` is capped below the pause mark, so a
        sleeping writer never makes producers pause. `core.frame.frames_of` turns the result into frames."""
        with self._cond:
            self._wake_at = max(1, min(wake_at, self._hi // 2))
            if self._used < self._wake_at:
                self._cond.wait(timeout)
            self._wake_at = 1
            ring = self._ring
            out: list[Frame | FrameBlock] = []
            taken = 0
            while ring and taken < max_frames:
                chunk = ring.popleft()
                if isinstance(chunk, FrameBlock):
                    out.append(chunk)
                    taken += len(chunk.values)
                    continue
                room = max_frames - taken
                if len(chunk) > room:
                    ring.appendleft(chunk[room:])
                    chunk = chunk[:room]
                out += chunk
                taken += len(chunk)
            self._used -= taken
            used = self._used
            changed = self._update_flow_locked(used)
        metrics.RING_USED.set(used)
        if changed is not None:
            self._notify(changed)
        return out

    def wake(self) -> None:
        """Wake a writer blocked in `drain` (shutdown, flush request)."""
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return self._used

    def hold(self) -> None:
        """Pause producers on behalf of the WAL (full_policy: pause) until `release()`."""
        self._set_hold(True)

    def release(self) -> None:
        self._set_hold(False)

    # -- flow control ------------------------------------------------------------------------------
    def on_flow(self, listener: FlowListener) -> None:
        self._listeners.append(listener)

    def _set_hold(self, held: bool) -> None:
        with self._cond:
            self._held = held
            changed = self._update_flow_locked(self._used)
        if changed is not None:
            self._notify(changed)

    def _update_flow_locked(self, used: int) -> bool | None:
        """Apply the hysteresis; returns the new paused state when it changed, else None."""
        if not self._ring_paused and used >= self._hi:
            self._ring_paused = True
        elif self._ring_paused and used <= self._lo:
            self._ring_paused = False
        paused = self._ring_paused or self._held
        if paused == self._paused:
            return None
        self._paused = paused
        return paused

    def _notify(self, paused: bool) -> None:
        metrics.FLOW.labels(signal="pause" if paused else "resume").inc()
        for listener in self._listeners:
            listener(paused)
