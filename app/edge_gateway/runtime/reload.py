"""Hot reload: a file change, SIGHUP or `edge-ctl reload` becomes the smallest live change.

Every trigger lands in one queue served by one thread, so two reloads never interleave and none
runs inside a signal handler, the control socket's thread or a worker. A reload loads and
validates the whole directory first (an invalid edit changes nothing and is counted in
`cfg_invalid_total`) in a child process (config/isolated.py: the gateway's heap never holds YAML
or the validator), then hands the new Snapshot to `Gateway.apply`, which diffs it against the
running one and touches only what changed (rolling back if that fails).

The directory is watched by polling a signature of its YAML files (name, inode, mtime, size):
an editor's atomic rename changes the inode, an in-place write the mtime and size. A change is
acted on once the signature has held still for one poll, so a file written in several steps is
read once, whole. Polling costs a handful of stat() calls a second and needs no inotify, which
a read-only rootfs with a bind-mounted /etc does not always deliver.

Whatever the files hold, a reload answers: `reload()` catches everything at the load and apply
boundaries (a loader bug is counted as invalid, an apply that raises anything else than ApplyError
as a rollback) and the running configuration stays. If the thread dies anyway (SystemExit,
a bug outside that boundary), the supervisor calls `restart()`, which serves the same queue from a
new thread: no queued SIGHUP or `edge-ctl reload` is lost, and the one in flight gets an error.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from edge_gateway.config import isolated
from edge_gateway.config.model import Snapshot
from edge_gateway.config.problems import ConfigError
from edge_gateway.metrics import REGISTRY
from edge_gateway.runtime import heap

if TYPE_CHECKING:
    from edge_gateway.runtime.gateway import Gateway

log = logging.getLogger(__name__)

REVISION = Gauge(
    "cfg_revision_current",
    "The running configuration's revision: from etcd, the etcd revision it was read at; from local files, "
    "the configurations this process has run (1 from start, +1 whenever a reload makes one with another "
    "content hash the running one; starts again at 1 with the process); the hash is in cfg_revision_info",
    registry=REGISTRY,
)
REVISION_INFO = Gauge(
    "cfg_revision_info",
    "Always 1; hash: the running configuration's content revision (the first 12 hex digits of its SHA-256)",
    ["hash"],
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


_revision_lock = threading.Lock()
_running_revision: str | None = None
_generation = 0


def record_revision(revision: str, store_revision: int | None = None) -> int:
    """`revision` is now the running configuration: count it if it differs from the last one, and return
    the count. A number that only grows inside a process (a dashboard can draw it), with the content hash
    as a label instead of a 2.8e14 gauge. Nothing is persisted: it restarts at 1 with the process. With a
    configuration store (`store_revision`, etcd's revision), the gauge is that revision instead, the
    number the fleet compares across gateways."""
    global _running_revision, _generation
    with _revision_lock:
        if revision != _running_revision:
            _running_revision, _generation = revision, _generation + 1
            REVISION_INFO.clear()
            REVISION_INFO.labels(hash=revision[:12] or "none").set(1)
            REVISION.set(_generation)
        if store_revision is not None:
            REVISION.set(store_revision)
        return _generation


class ApplyError(Exception):
    """Applying a valid snapshot failed; the previous one has been restored."""


Signature = tuple[tuple[str, int, int, int], ...]
# One queued reload: why, where the answer goes, and (from a configuration store) the revision directory
# to load and the store's revision of it; None, None: the directory the gateway runs on.
Request = tuple[str, "Future[dict[str, Any]]", str | None, int | None]


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


class Reloader:
    """The reload queue and the thread that serves it (`cfg-reload`); restartable, unlike a Thread."""

    name = "cfg-reload"

    def __init__(
        self,
        gateway: Gateway,
        directory: str,
        poll: float = 0.5,
        load: Callable[[str], Snapshot] | None = None,
        watch_files: bool = True,
        store_revision: int | None = None,
    ) -> None:
        """`load` (default: the loader, in its child process) and `watch_files=False` are the configuration store's
        (runtime/fleet.py): its revision directories are written once and never edited, so nothing is
        polled, and each revision comes as `request(..., directory=, store_revision=)` from its thread."""
        self.gateway = gateway
        self.directory = directory  # owned by the reload thread once it runs
        self.poll = poll
        self.load = load
        self.watch_files = watch_files
        self.store_revision = store_revision
        self.heartbeat = time.monotonic()
        self.last: dict[str, Any] | None = None  # the last reload's answer, for `edge-ctl status`
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._seen = signature(directory) if watch_files else ()  # what the running snapshot was loaded from
        self._pending: Signature | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.restarts = 0
        record_revision(gateway.snapshot.revision, store_revision)

    def start(self) -> None:
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def restart(self) -> None:
        """The supervisor's restart of a dead reload thread; a no-op while it runs or once stopped."""
        if self._stopping or self.is_alive():
            return
        self.restarts += 1
        log.warning("reload thread restarted (%d so far); queued reloads are served by the new one", self.restarts)
        self.start()

    def request(
        self, reason: str, directory: str | None = None, store_revision: int | None = None
    ) -> Future[dict[str, Any]]:
        """Queue a reload (SIGHUP handler, control socket, the store's watch thread); the Future gets the
        answer. `directory`: load that one instead, and run on it from now on if it is applied."""
        fut: Future[dict[str, Any]] = Future()
        self._requests.put((reason, fut, directory, store_revision))
        return fut

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._requests.put(None)
        if self.is_alive() and threading.current_thread() is not self._thread:
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
            reason, fut, directory, store_revision = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self.reload(reason, directory, store_revision))
            except BaseException as e:  # the thread dies (reload() itself catches every Exception)
                fut.set_exception(ApplyError(f"the reload thread died: {type(e).__name__}: {e}"))
                raise

    def _watch(self) -> None:
        if not self.watch_files:
            return
        sig = signature(self.directory)
        if sig == self._seen:
            self._pending = None
        elif sig != self._pending:
            self._pending = sig  # changed: wait one poll for it to hold still
        else:
            self.reload("file change")

    def reload(self, reason: str, directory: str | None = None, store_revision: int | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        where = directory or self.directory
        if store_revision is None:
            store_revision = self.store_revision
        if self.watch_files:
            self._seen = signature(where)  # before reading: a later edit triggers another reload
        self._pending = None
        log.info("reloading configuration from %s (%s)", where, reason)
        try:
            snapshot = self.load(where) if self.load is not None else isolated.load_snapshot(where)
        except ConfigError as e:
            return self._refused(reason, [str(p) for p in e.problems])
        except OSError as e:  # also the loader child's failure (isolated.LoadFailed), which says why
            return self._refused(reason, [f"{where}: {e}"])
        except Exception as e:  # a loader bug must not end reloading: refuse this edit, keep running
            log.exception("loading %s failed unexpectedly", where)
            return self._refused(reason, [f"{where}:1: cannot load: {type(e).__name__}: {e}"])
        try:
            answer = self.gateway.apply(snapshot)
        except Exception as e:  # ApplyError: restored; anything else: apply()'s own bug, logged as one
            if not isinstance(e, ApplyError):
                log.exception("applying configuration %s raised; keeping %s", snapshot.revision[:12], "the running one")
            ROLLBACK.inc()
            APPLY.labels(result="rollback").inc()
            error = str(e) if isinstance(e, ApplyError) else f"{type(e).__name__}: {e}"
            answer = {"applied": False, "result": "rollback", "error": error, "revision": snapshot.revision}
            log.error("configuration %s rolled back: %s", snapshot.revision[:12], error)
        else:
            APPLY.labels(result=answer["result"]).inc()
            self.directory, self.store_revision = where, store_revision
            record_revision(self.gateway.snapshot.revision, store_revision)
        heap.settle()  # the load's node trees, and the old configuration if it was replaced, are garbage
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
