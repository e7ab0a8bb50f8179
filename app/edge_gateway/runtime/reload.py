"""Hot reload: a file change, SIGHUP or `edge-ctl reload` becomes the smallest live change.

Every trigger lands in one queue served by one thread, so two reloads never interleave and none
runs inside a signal handler, the control socket's thread or a worker. A reload loads and
validates the whole directory first (an invalid edit changes nothing and is counted in
`cfg_invalid_total`), then hands the new Snapshot to `Gateway.apply`, which diffs it against the
running one and touches only what changed (rolling back if that fails).

The directory is watched by polling a signature of its YAML files (name, inode, mtime, size):
an editor's atomic rename changes the inode, an in-place write the mtime and size. A change is
acted on once the signature has held still for one poll, so a file written in several steps is
read once, whole. Polling costs a handful of stat() calls a second and needs no inotify, which
a read-only rootfs with a bind-mounted /etc does not always deliver.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from edge_gateway.config.loader import ConfigError, load_snapshot
from edge_gateway.metrics import REGISTRY

if TYPE_CHECKING:
    from edge_gateway.runtime.gateway import Gateway

log = logging.getLogger(__name__)

REVISION = Gauge(
    "cfg_revision_current",
    "Running configuration: the first 48 bits of its SHA-256 revision, as a number (changes on every applied reload)",
    registry=REGISTRY,
)
APPLY = Counter("cfg_apply", "Reloads, by result: ok, unchanged, invalid, rollback", ["result"], registry=REGISTRY)
APPLY_SECONDS = Histogram(
    "cfg_apply_duration_seconds",
    "Time from reading the files to the change being live",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
INVALID = Counter("cfg_invalid", "Reloads refused because the new configuration is invalid", registry=REGISTRY)
ROLLBACK = Counter("cfg_rollback", "Reloads that failed while applying and were rolled back", registry=REGISTRY)


def revision_number(revision: str) -> int:
    """48 bits fit a float64 exactly, so the gauge identifies the revision, not just its order."""
    return int(revision[:12], 16) if revision else 0


class ApplyError(Exception):
    """Applying a valid snapshot failed; the previous one has been restored."""


Signature = tuple[tuple[str, int, int, int], ...]


def signature(directory: str) -> Signature:
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return ()
    for name in names:
        if not name.endswith((".yml", ".yaml")):
            continue
        try:
            st = os.stat(os.path.join(directory, name))
        except FileNotFoundError:  # renamed away between listdir and stat
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class Reloader(threading.Thread):
    def __init__(self, gateway: Gateway, directory: str, poll: float = 0.5) -> None:
        super().__init__(name="cfg-reload", daemon=True)
        self.gateway = gateway
        self.directory = directory
        self.poll = poll
        self.heartbeat = time.monotonic()
        self.last: dict[str, Any] | None = None  # the last reload's answer, for `edge-ctl status`
        self._requests: queue.SimpleQueue[tuple[str, Future[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._seen = signature(directory)  # what the running snapshot was loaded from (near enough)
        self._pending: Signature | None = None
        REVISION.set(revision_number(gateway.snapshot.revision))

    def request(self, reason: str) -> Future[dict[str, Any]]:
        """Queue a reload (SIGHUP handler, control socket); the Future gets the answer."""
        fut: Future[dict[str, Any]] = Future()
        self._requests.put((reason, fut))
        return fut

    def stop(self, timeout: float = 5.0) -> None:
        self._requests.put(None)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            try:
                item = self._requests.get(timeout=self.poll)
            except queue.Empty:
                self._watch()
                continue
            if item is None:
                return
            reason, fut = item
            if fut.set_running_or_notify_cancel():
                fut.set_result(self.reload(reason))

    def _watch(self) -> None:
        sig = signature(self.directory)
        if sig == self._seen:
            self._pending = None
        elif sig != self._pending:
            self._pending = sig  # changed: wait one poll for it to hold still
        else:
            self.reload("file change")

    def reload(self, reason: str) -> dict[str, Any]:
        t0 = time.monotonic()
        self._seen = signature(self.directory)  # before reading: a later edit triggers another reload
        self._pending = None
        log.info("reloading configuration from %s (%s)", self.directory, reason)
        try:
            snapshot = load_snapshot(self.directory)
        except ConfigError as e:
            return self._refused(reason, [str(p) for p in e.problems])
        except OSError as e:
            return self._refused(reason, [f"{self.directory}: {e}"])
        try:
            answer = self.gateway.apply(snapshot)
        except ApplyError as e:
            ROLLBACK.inc()
            APPLY.labels(result="rollback").inc()
            answer = {"applied": False, "result": "rollback", "error": str(e), "revision": snapshot.revision}
            log.error("configuration %s rolled back: %s", snapshot.revision[:12], e)
        else:
            APPLY.labels(result=answer["result"]).inc()
            REVISION.set(revision_number(snapshot.revision))
        APPLY_SECONDS.observe(time.monotonic() - t0)
        answer["reason"] = reason
        self.last = answer
        return answer

    def _refused(self, reason: str, problems: list[str]) -> dict[str, Any]:
        INVALID.inc()
        APPLY.labels(result="invalid").inc()
        for p in problems:
            log.error("invalid configuration, keeping the running one: %s", p)
        self.last = {"applied": False, "result": "invalid", "problems": problems, "reason": reason}
        return self.last
