"""The supervisor: turns worker heartbeats into systemd's READY / WATCHDOG / STATUS.

systemd can only restart what it knows is broken. Every worker (a line thread, the WAL
writer, the uplink) stamps `heartbeat = time.monotonic()` when it makes real progress. The
supervisor sends `WATCHDOG=1` only while every worker is alive and its heartbeat is younger
than that worker's own limit; one hung or dead worker stops the keep-alives, so systemd's
WatchdogSec fires and restarts the whole service — the WAL makes that restart lossless.

A worker that died and is marked restartable (line threads, MQTT sources and the reload thread:
they own no durable state) is restarted here, with a warning in the log and
`supervisor_restart_total{worker}` counting it. The rule that keeps the watchdog honest:

- restarts back off exponentially (0.5 s, 1 s, 2 s, … capped at 30 s); while a restart is pending
  within the budget the worker counts as recovering, not dead;
- a worker restarted `max_restarts` (5) times within `restart_window` (300 s) counts as dead: the
  keep-alives stop, STATUS= says DEGRADED, and systemd's WatchdogSec restarts the service. A worker
  that dies at once every time gets there in about 8 s (restarts at 0, 0.5, 1.5, 3.5 and 7.5 s);
- a restart that raises counts as an attempt (logged with its traceback), never ends the supervisor;
- workers with durable state (the WAL writer, the uplink and its cursor) are not restarted in-process:
  their death stops the keep-alives at once and the restarted service recovers from the WAL.

The supervisor itself survives a failing check or summary: a check that raises is a problem (the
keep-alives stop until it passes again), so a supervisor bug cannot keep a broken process "healthy".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import sdnotify
from prometheus_client import Counter, Gauge

from edge_gateway.metrics import REGISTRY

log = logging.getLogger(__name__)

RESTARTS = Counter("supervisor_restart", "Worker threads restarted after a crash", ["worker"], registry=REGISTRY)
HEALTHY = Gauge("supervisor_healthy", "1 while every worker is alive and progressing", registry=REGISTRY)


class Beating(Protocol):
    heartbeat: float

    def is_alive(self) -> bool: ...


@dataclass
class Watched:
    """One worker as the supervisor sees it. `target()` returns the current thread object
    (a restart replaces it; None once a reload removed it); `restart` is None for workers that
    must not be restarted."""

    name: str
    target: Callable[[], Beating | None]
    stale_after: float
    restart: Callable[[], object] | None = None
    max_restarts: int = 5  # within `restart_window` seconds, before it counts as dead
    restart_window: float = 300.0
    backoff: float = 0.5  # seconds before the 2nd restart; doubled for each further one, at most 30 s
    _restarts: list[float] = field(default_factory=list)
    _next_restart: float = 0.0


class Notifier:
    """sd_notify(3) through the sdnotify package, which reads NOTIFY_SOCKET when it is constructed.

    Made with `debug=True` so a failure raises (its default swallows every error) and is logged
    once here. Its socket is made non-blocking: a receiver that does not read (a full datagram
    queue) drops a notification, which is logged; a blocked supervisor would stall shutdown itself.
    """

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self._sd: sdnotify.SystemdNotifier | None = None
        self._warned = False
        if self.address:
            try:
                self._sd = sdnotify.SystemdNotifier(debug=True)
                self._sd.socket.setblocking(False)
            except OSError as e:
                log.warning("sd_notify socket %s: %s; systemd will not hear from us", self.address, e)
                self._sd = None

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def notify(self, *lines: str) -> None:
        if self._sd is None:
            return
        try:
            self._sd.notify("\n".join(lines))
        except OSError as e:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.address, e)
                self._warned = True


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC (seconds), as sd_watchdog_enabled(3) recommends; None when unset."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Supervisor(threading.Thread):
    def __init__(
        self,
        workers: Callable[[], Iterable[Watched]],
        summary: Callable[[], str],
        notifier: Notifier | None = None,
        status_every: float = 2.0,
    ) -> None:
        super().__init__(name="supervisor", daemon=True)
        self._workers = workers
        self._summary = summary
        self.notifier = notifier or Notifier()
        self.wd_interval = watchdog_interval()
        self.tick = min(0.25, self.wd_interval / 2) if self.wd_interval else 0.25
        self.status_every = status_every
        self.ready = False
        self.healthy = False
        self.problems: list[str] = []
        self._stop = threading.Event()
        self.heartbeat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def stopping(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")

    def run(self) -> None:
        next_wd = next_status = 0.0
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            self.heartbeat = now
            try:
                problems = self.check(now)
            except Exception as e:  # a supervisor bug: unhealthy (honest), but keep supervising
                log.exception("supervisor: checking the workers failed")
                problems = [f"supervisor check failed: {type(e).__name__}: {e}"]
            if problems != self.problems:
                for p in problems:
                    if p not in self.problems:
                        log.error("supervisor: %s; watchdog keep-alives stop", p)
                if not problems and self.problems:
                    log.info("supervisor: all workers healthy again")
                self.problems = problems
            self.healthy = not problems
            HEALTHY.set(1 if self.healthy else 0)
            if not self.ready and self.healthy:
                self.ready = True
                self.notifier.notify("READY=1", f"STATUS={self._status_line()}")
                next_status = now + self.status_every
            if self.ready and self.healthy and self.wd_interval and now >= next_wd:
                self.notifier.notify("WATCHDOG=1")
                next_wd = now + self.wd_interval
            if self.ready and now >= next_status:
                self.notifier.notify(f"STATUS={self._status_line()}")
                next_status = now + self.status_every

    def check(self, now: float) -> list[str]:
        """Restart what may be restarted; return what is wrong."""
        problems: list[str] = []
        for w in self._workers():
            t = w.target()
            if t is None:
                continue
            if not t.is_alive():
                if not self._try_restart(w, now):
                    problems.append(f"worker {w.name} is dead")
            elif now - t.heartbeat > w.stale_after:
                problems.append(f"worker {w.name} hung: no progress for {now - t.heartbeat:.1f}s")
        return problems

    def _try_restart(self, w: Watched, now: float) -> bool:
        if w.restart is None:
            return False
        w._restarts = [t for t in w._restarts if now - t < w.restart_window]
        if len(w._restarts) >= w.max_restarts:
            return False
        if now < w._next_restart:
            return True  # backing off; still within budget
        log.warning("supervisor: restarting crashed worker %s (attempt %d)", w.name, len(w._restarts) + 1)
        w._restarts.append(now)
        w._next_restart = now + min(30.0, w.backoff * 2 ** (len(w._restarts) - 1))
        RESTARTS.labels(worker=w.name).inc()
        try:
            w.restart()
        except Exception:  # counted as an attempt; the budget still ends in "dead"
            log.exception("supervisor: restarting worker %s failed", w.name)
        return True

    def _status_line(self) -> str:
        try:
            line = self._summary()
        except Exception as e:  # STATUS= is informative; a failing summary must not end supervision
            log.exception("supervisor: the status summary failed")
            line = f"status unavailable: {type(e).__name__}"
        if self.problems:
            line = f"DEGRADED {'; '.join(self.problems)} | {line}"
        return line.replace("\n", " ")[:200]
