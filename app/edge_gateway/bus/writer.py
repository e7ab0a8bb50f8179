"""The WAL writer thread: drains the bus into segments and group-commits every `flush_ms`.

It is the only thread that touches segment files for writing, so appends need no lock; it
is also where GC and the `max_bytes` policy run, right after a commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_gateway.bus import metrics
from edge_gateway.bus.frame import Frame
from edge_gateway.bus.framebus import FrameBus
from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import GatewayCfg, WalCfg

log = logging.getLogger(__name__)

DRAIN_BATCH = 8192
Listener = Callable[[list[Frame]], None]


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
        self._flush_done = 0  # tickets whose frames are durable
        self._stall_until = 0.0
        self._holding = False
        self.error: BaseException | None = None

    def add_listener(self, fn: Listener) -> None:
        """`fn(frames)` runs on this thread after each commit: keep it cheap and non-blocking."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def stall(self, seconds: float) -> None:
        """Test/fault hook: stop draining for `seconds` (the heartbeat stops too)."""
        self._stall_until = time.monotonic() + seconds

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit now and wait until it is durable."""
        with self._flushed:
            self._flush_asked += 1
            ticket = self._flush_asked
            self._flush_req.set()
            self.bus.wake()
            return self._flushed.wait_for(lambda: self._flush_done >= ticket, timeout)

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
            frames = self.bus.drain(DRAIN_BATCH, timeout=max(0.0, min(0.1, next_commit - now)))
            if frames:
                self.wal.append(frames)
            if time.monotonic() >= next_commit or self._flush_req.is_set():
                ticket = self._flush_asked
                if self._flush_req.is_set():  # flush(): everything published before it is durable after it
                    self._flush_req.clear()
                    while frames := self.bus.drain(DRAIN_BATCH, timeout=0):
                        self.wal.append(frames)
                self._commit(ticket)
                next_commit = time.monotonic() + self.flush_s
        ticket = self._flush_asked
        while frames := self.bus.drain(DRAIN_BATCH, timeout=0):
            self.wal.append(frames)
        self._commit(ticket)
        self.wal.close()
        if self._holding:
            self.bus.release()

    def _commit(self, ticket: int) -> None:
        t0 = time.perf_counter()
        done = self.wal.commit()
        if done:
            metrics.FSYNC.observe(time.perf_counter() - t0)
            for fn in list(self._listeners):
                fn(done)
        self.wal.persist_acks()
        self.wal.gc()
        self._enforce_max_bytes()
        with self._flushed:
            self._flush_done = max(self._flush_done, ticket)
            self._flushed.notify_all()

    def _enforce_max_bytes(self) -> None:
        total = self.wal.total_bytes
        if self.policy == "drop_oldest":
            while total > self.max_bytes and len(self.wal.segments) > 1:
                self.wal.drop_oldest()
                total = self.wal.total_bytes
        elif total > self.max_bytes and not self._holding:
            log.warning("wal: full (%d bytes > %d): pausing producers until consumers catch up", total, self.max_bytes)
            self._holding = True
            self.bus.hold()
        elif self._holding and total <= self.max_bytes - self.wal.cfg.segment_bytes:
            log.info("wal: below max_bytes again: resuming producers")
            self._holding = False
            self.bus.release()


def open_bus_and_wal(cfg: GatewayCfg) -> tuple[FrameBus, Wal, WalWriter]:
    """Open (and recover) the WAL, then start the bus at the WAL's next seq."""
    wal = Wal.open(cfg.wal)
    bus = FrameBus(cfg.bus, next_seq=wal.next_seq)
    return bus, wal, WalWriter(bus, wal, cfg.wal)
