"""The WAL writer thread: drains the bus into segments and group-commits every `flush_ms`.

It wakes on its own clock (at least every 0.1 s, for the heartbeat) or when a drain's worth of frames
waits, not on every publish: committed frames reach consumers at the commit anyway.

It is the only thread that touches segment files for writing, so appends need no lock; it
is also where GC and the `max_bytes` policy run, right after a commit.

A failed commit (ENOSPC, EIO) never ends the thread: the WAL is left as it was after the last
good commit and keeps the frames (wal.py). The writer then stops draining the bus and holds it
(producers pause, as for `full_policy: pause`), frees what it may — acked segments, and with
`drop_oldest` on a full disk the oldest segment (its lost frames counted) — and retries, at once
when something was freed, else with backoff (RETRY_FIRST doubling to RETRY_MAX). The first commit
that succeeds releases the bus. Meanwhile `wal.fault`, framebus_wal_fault{reason}, STATUS= and
`edge-ctl status` say so, and the heartbeat goes on: a restart would not make space.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from edge_gateway.bus import metrics
from edge_gateway.bus.framebus import FrameBus
from edge_gateway.bus.record import Run
from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import GatewayCfg, WalCfg

log = logging.getLogger(__name__)

DRAIN_BATCH = 8192
RETRY_FIRST = 0.05  # s after the first failed commit; doubles up to RETRY_MAX
RETRY_MAX = 1.0
_SPACE = (errno.ENOSPC, errno.EDQUOT)
Listener = Callable[[list[Run]], None]  # the runs just committed (`Run.frames()` decodes them)


class WalWriter(threading.Thread):
    def __init__(self, bus: FrameBus, wal: Wal, cfg: WalCfg) -> None:
        super().__init__(name="wal-writer", daemon=False)
        self.bus = bus
        self.wal = wal
        self.flush_s = cfg.flush_ms / 1000.0
        self.max_bytes = cfg.max_bytes
        self.policy = cfg.full_policy
        self.heartbeat = time.monotonic()
        self._listeners: list[Listener] = []
        self._stopping = threading.Event()
        self._flush_req = threading.Event()
        self._flushed = threading.Condition()
        self._flush_asked = 0  # flush() tickets handed out
        self._flush_tried = 0  # tickets a commit was attempted for
        self._flush_done = 0  # tickets whose frames are durable
        self._stall_until = 0.0
        self._holding = False
        self._over_max = False  # full_policy pause: max_bytes reached
        self._backoff = 0.0
        self._retry_at = 0.0
        self.error: BaseException | None = None

    def add_listener(self, fn: Listener) -> None:
        """`fn(runs)` runs on this thread after each commit: keep it cheap and non-blocking."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def stall(self, seconds: float) -> None:
        """Test/fault hook: stop draining for `seconds` (the heartbeat stops too)."""
        self._stall_until = time.monotonic() + seconds

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit now and wait until it is durable; False if that commit failed (see `wal.fault`)."""
        with self._flushed:
            self._flush_asked += 1
            ticket = self._flush_asked
            self._flush_req.set()
            self.bus.wake()
            self._flushed.wait_for(lambda: self._flush_tried >= ticket, timeout)
            return self._flush_done >= ticket

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.bus.wake()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # the supervisor sees the dead thread; say why first
            self.error = e
            log.exception("wal writer failed: %s", e)
            raise

    def _loop(self) -> None:
        next_commit = time.monotonic() + self.flush_s
        while not self._stopping.is_set():
            now = time.monotonic()
            if now < self._stall_until:
                time.sleep(min(0.01, self._stall_until - now))
                continue
            self.heartbeat = now
            if self.wal.fault is None:
                frames = self.bus.drain(DRAIN_BATCH, timeout=max(0.0, min(0.1, next_commit - now)), wake_at=DRAIN_BATCH)
                if frames:
                    self.wal.append(frames)
                due = time.monotonic() >= next_commit
            else:  # the last commit failed: take nothing more from the bus until one succeeds
                self._flush_req.wait(max(0.0, min(0.1, self._retry_at - now)))
                due = time.monotonic() >= self._retry_at
            if due or self._flush_req.is_set():
                ticket = self._flush_asked
                if self._flush_req.is_set():  # flush(): everything published before it is durable after it
                    self._flush_req.clear()
                    while self.wal.fault is None and (frames := self.bus.drain(DRAIN_BATCH, timeout=0)):
                        self.wal.append(frames)
                self._commit(ticket)
                next_commit = time.monotonic() + self.flush_s
        ticket = self._flush_asked
        while frames := self.bus.drain(DRAIN_BATCH, timeout=0):
            self.wal.append(frames)
        self._commit(ticket)
        while self.wal.fault is not None and self._retry_at <= time.monotonic():  # space was freed: again
            self._commit(ticket)
        self.wal.close()  # counts what still could not be written as lost
        if self._holding:
            self.bus.release()

    def _commit(self, ticket: int) -> None:
        t0 = time.perf_counter()
        try:
            done = self.wal.commit()
        except OSError as e:
            done = []
            self._failed(e)
        else:
            self._backoff = 0.0
        ok = self.wal.unwritten == 0  # a commit cut short returns what it wrote; the rest is not durable
        if done:
            metrics.FSYNC.observe(time.perf_counter() - t0)
            for fn in list(self._listeners):
                fn(done)
        self.wal.gc()
        self.wal.persist()
        self._enforce_max_bytes()
        self._update_hold()
        with self._flushed:
            self._flush_tried = max(self._flush_tried, ticket)
            if ok:
                self._flush_done = max(self._flush_done, ticket)
            self._flushed.notify_all()

    def _failed(self, e: OSError) -> None:
        """Make room if the policy allows, and schedule the retry: now if something was freed."""
        freed = self.wal.gc()
        if not freed and e.errno in _SPACE and self.policy == "drop_oldest":
            freed = self.wal.drop_oldest(f"disk full ({e.strerror})")
        now = time.monotonic()
        if freed:
            self._retry_at = now
            return
        self._backoff = min(RETRY_MAX, max(RETRY_FIRST, 2 * self._backoff))
        self._retry_at = now + self._backoff

    def _enforce_max_bytes(self) -> None:
        total = self.wal.total_bytes
        if self.policy == "drop_oldest":
            while total > self.max_bytes and len(self.wal.segments) > 1:
                self.wal.drop_oldest(f"full ({total} bytes > max_bytes {self.max_bytes})")
                total = self.wal.total_bytes
        elif total > self.max_bytes:
            self._over_max = True
        elif total <= self.max_bytes - self.wal.cfg.segment_bytes:
            self._over_max = False

    def _update_hold(self) -> None:
        """Producers pause while the WAL is over max_bytes (pause) or cannot be written, and not longer."""
        hold = self._over_max or self.wal.fault is not None
        if hold == self._holding:
            return
        if hold and self.wal.fault is not None:
            log.warning("wal: %s: pausing producers until a commit succeeds", self.wal.fault)
        elif hold:
            log.warning(
                "wal: full (%d bytes > %d): pausing producers until consumers catch up",
                self.wal.total_bytes,
                self.max_bytes,
            )
        else:
            log.info("wal: writable and below max_bytes: resuming producers")
        self._holding = hold
        if hold:
            self.bus.hold()
        else:
            self.bus.release()


def open_bus_and_wal(cfg: GatewayCfg) -> tuple[FrameBus, Wal, WalWriter]:
    """Open (and recover) the WAL, then start the bus at the WAL's next seq."""
    wal = Wal.open(cfg.wal)
    bus = FrameBus(cfg.bus, next_seq=wal.next_seq)
    return bus, wal, WalWriter(bus, wal, cfg.wal)
