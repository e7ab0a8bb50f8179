"""The gateway's side of fleet configuration: etcd as its configuration source (design §6.3–6.9).

    etcd ──watch(prefix, from applied+1)──► cfg-etcd thread ──snapshot(rev)──► RevisionCache rev-<N>/
                                                 │                                   │ loader (file:line)
                                                 └── Reloader.request(dir, N) ──► Gateway.apply (smallest
                                                       change, rollback on failure) ──► current -> rev-<N>
    cfg-presence thread ──► presence key on a lease (keep-alive), status key on change and every minute

Two threads, each owning its state. `cfg-etcd` owns the Store's watch, the applied and rejected
revisions, the connection state and the cache (runtime/cfgcache.py). On any event under the prefix it
reads the whole prefix at one revision (`Store.snapshot`: one range, so a txn that changed several
tables is seen whole or not at all) and hands that revision's directory to the ordinary reload queue;
the answer decides: applied → `current` moves to it; invalid or rolled back → the old configuration
keeps running, the revision's directory is removed, a `sys.cfg_rollback` frame goes to the cloud and
the status key shows the revision and its problems. A watch that fails because its revision was
compacted is a full resync (a fresh snapshot), never a silent miss; a lost connection is retried with
backoff (the Store moves to another endpoint), followed by a resync. `cfg-presence` owns the lease:
it keeps it alive every TTL/3, makes a new one after an outage, revokes it on a clean stop (so a dead
gateway's key disappears within the TTL), and writes the status key when the gateway's health or the
revisions changed, and every STATUS_REFRESH seconds. What both read (the status document's inputs)
is behind `_lock`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from edge_gateway import __version__
from edge_gateway.config import isolated
from edge_gateway.config.etcd.store import Compacted, EtcdError, EtcdUnavailable, PermissionDenied, Store
from edge_gateway.config.model import EtcdSourceCfg, Snapshot
from edge_gateway.config.problems import ConfigError
from edge_gateway.core.frame import GOOD, Frame, now_ms
from edge_gateway.metrics import REGISTRY
from edge_gateway.runtime.cfgcache import RevisionCache

if TYPE_CHECKING:
    from edge_gateway.runtime.gateway import Gateway

log = logging.getLogger(__name__)

CONNECTED = Gauge("cfg_source_connected", "1 while the configuration store (etcd) is reachable", registry=REGISTRY)
FROM_CACHE = Gauge(
    "cfg_source_cache",
    "1 while the gateway runs on its cached configuration without having reached the store since it started",
    registry=REGISTRY,
)
RESYNC = Counter(
    "cfg_source_resync", "Full re-reads of the configuration prefix, by reason", ["reason"], registry=REGISTRY
)
STORE_REVISION = Gauge(
    "cfg_source_revision", "The newest revision of the configuration prefix the gateway has seen", registry=REGISTRY
)

PRESENCE_TTL = 10  # seconds: a gateway that dies disappears from `edge-cfg fleet status` within this
STATUS_REFRESH = 60.0  # seconds: the status key is rewritten at least this often (it carries `updated`)
APPLY_TIMEOUT = 120.0  # a reload answers well before (runtime/commands.RELOAD_TIMEOUT)
BACKOFF = (0.5, 10.0)  # reconnect: base·2ⁿ up to max, equal jitter
FIRST_WAIT = 2.0  # seconds between reads of a prefix that holds no valid configuration yet
MAX_PROBLEMS = 50  # in the status key and the sys.cfg_rollback frame
GATEWAY_ID = "{gateway_id}"  # in a table's text: this gateway's id (see EtcdSource._own)


class NoConfiguration(Exception):
    """Neither the store nor the cache gives a configuration to start with."""


@dataclasses.dataclass(frozen=True)
class Rejected:
    revision: int
    problems: tuple[str, ...]
    result: str  # invalid | rollback


def make_store(cfg: EtcdSourceCfg, timeout: float = 5.0) -> tuple[Any, str]:
    """The Store for `cfg` and the gateway id (configured, else the prefix's last segment)."""
    from edge_gateway.config.etcd.url import Credentials, EtcdUrl

    url = EtcdUrl.parse(cfg.url, cfg.gateway_id)
    creds = Credentials.from_options_env(
        ca=cfg.ca, cert=cfg.cert, key=cfg.key, user=cfg.username, password_file=cfg.password_file
    )
    return Store(url, creds, timeout=timeout), url.gateway_id


def loader(cfg: EtcdSourceCfg, state: Path) -> Callable[[str], Snapshot]:
    """How a revision directory becomes a Snapshot: the ordinary loader (in its child process:
    config/isolated.py), relative paths against the
    state directory (they must not move with every revision), the bootstrap file's host-local
    settings over the fleet's."""

    def load(directory: str) -> Snapshot:
        snap = isolated.load_snapshot(directory, base=state)
        g = snap.gateway
        if cfg.metrics_listen is not None:
            g = dataclasses.replace(g, metrics_host=cfg.metrics_listen[0], metrics_port=cfg.metrics_listen[1])
        if cfg.control_socket is not None:
            g = dataclasses.replace(g, control_socket=cfg.control_socket)
        return dataclasses.replace(snap, gateway=g) if g is not snap.gateway else snap

    return load


def shown(problem: str, directory: Path) -> str:
    """A loader problem for the fleet: `variables.yml:12: tag x: …`, without this host's state path."""
    head = str(directory) + "/"
    return problem[len(head) :] if problem.startswith(head) else problem


class EtcdSource:
    """The configuration source of a gateway run from etcd: built before the Gateway (`bootstrap`
    chooses the first configuration), started by it (`start`, after its reload thread), stopped first."""

    name = "cfg-etcd"

    def __init__(self, cfg: EtcdSourceCfg, store: Any, gateway_id: str, state: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.gateway_id = gateway_id
        self.state = state
        self.cache = RevisionCache(state / "etcd")
        self.load = loader(cfg, state)
        self.gateway: Gateway | None = None
        self.heartbeat = time.monotonic()
        self.restarts = 0
        self._stopping = threading.Event()
        self._status_request = threading.Event()  # set: cfg-presence writes the status key now
        self._watch_thread: threading.Thread | None = None
        self._presence_thread: threading.Thread | None = None
        self._watch: Any = None  # the Store's watch in progress (cancelled by stop)
        # Behind _lock: what the status key and `edge-ctl status` show (written by cfg-etcd).
        self._lock = threading.Lock()
        self.applied = 0  # the etcd revision running
        self.applied_since = time.time()
        self._applied_tables: dict[str, str] | None = None  # what runs, as the store holds it
        self._rejected_tables: dict[str, str] | None = None
        self.watch_from = 1  # cfg-etcd's own: the next store revision the watch must see
        self.rejected: Rejected | None = None
        self.connected = False
        self.from_cache = False
        self.last_error: str | None = None

    # -- the first configuration -------------------------------------------------------------------------
    def bootstrap(self, wait: Callable[[float], bool]) -> Snapshot:
        """The configuration to start with: the store's current revision if it is reachable and valid,
        else the cached one (saying so); with neither, wait (`wait(seconds)` True = stop) for a first
        valid revision while the store is reachable, and raise NoConfiguration when it is not."""
        delay = BACKOFF[0]
        while True:
            try:
                snap = self.store.snapshot()
            except EtcdError as e:  # unreachable, or this gateway's user may not read its prefix
                self._set(connected=False, last_error=str(e))
                cached = self._cached()
                if cached is not None:
                    log.warning(
                        "configuration store %s unreachable (%s): running on the cached revision %d",
                        self.cfg.url,
                        e,
                        self.applied,
                    )
                    self._set(from_cache=True)
                    return cached
                raise NoConfiguration(f"{self.cfg.url}: {e}; and no cached configuration") from e
            self._set(connected=True, last_error=None)
            chosen = self._try_first(snap)
            if chosen is not None:
                return chosen
            cached = self._cached()
            if cached is not None:
                log.warning("revision %d refused; running on the cached revision %d", _label(snap), self.applied)
                return cached
            what = "no valid configuration" if snap.tables else "nothing"
            log.error("%s under %s yet (revision %d): waiting for a push", what, self.cfg.url, _label(snap))
            if wait(delay):
                raise NoConfiguration("stopped while waiting for a first valid configuration")
            delay = min(delay * 2, FIRST_WAIT)

    def _try_first(self, snap: Any) -> Snapshot | None:
        rev = _label(snap)
        self.watch_from = max(self.watch_from, int(snap.revision) + 1)
        STORE_REVISION.set(rev)
        tables = dict(snap.tables)
        if not tables:
            return None  # nothing pushed yet: not a refusal, just nothing to run
        cur = self.cache.current()
        path = self.cache.write(rev, self._own(tables), {"source": self.cfg.url, "read_at": int(snap.revision)})
        try:
            loaded = self.load(str(path))
        except (ConfigError, OSError) as e:
            problems = [str(p) for p in e.problems] if isinstance(e, ConfigError) else [str(e)]
            for p in problems:
                log.error("revision %d: %s", rev, p)
            self.cache.discard(rev)
            self._reject(rev, tables, problems, "invalid", path)
            return None
        if cur is None or cur.revision != rev:
            self.cache.commit(rev)
        with self._lock:
            self.applied = rev
            self.applied_since = time.time()
            self._applied_tables = tables
            self.rejected = self._rejected_tables = None
        return loaded

    def _own(self, tables: dict[str, str]) -> dict[str, str]:
        """The tables as this gateway runs them: `{gateway_id}` is its id, so gateways that share one
        prefix (one push for a whole line) still differ in what must differ (MQTT client id, device).
        Replaced in the text, so every line number the loader reports stays the pushed one."""
        return {name: text.replace(GATEWAY_ID, self.gateway_id) for name, text in tables.items()}

    def _cached(self) -> Snapshot | None:
        cur = self.cache.current()
        if cur is None:
            return None
        try:
            snap = self.load(str(cur.path))
        except (ConfigError, OSError) as e:
            log.error("the cached revision %d cannot be loaded: %s", cur.revision, e)
            return None
        with self._lock:
            self.applied = cur.revision
            self._applied_tables = None  # unknown as a dict: the first snapshot read is offered
        return snap

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._stopping.clear()
        CONNECTED.set(1 if self.connected else 0)
        FROM_CACHE.set(1 if self.from_cache else 0)
        self._start_threads()

    def _start_threads(self) -> None:
        self.heartbeat = time.monotonic()
        if self._watch_thread is None or not self._watch_thread.is_alive():
            self._watch_thread = threading.Thread(target=self._run_watch, name=self.name, daemon=True)
            self._watch_thread.start()
        if self._presence_thread is None or not self._presence_thread.is_alive():
            self._presence_thread = threading.Thread(target=self._run_presence, name="cfg-presence", daemon=True)
            self._presence_thread.start()

    def is_alive(self) -> bool:
        return all(t is not None and t.is_alive() for t in (self._watch_thread, self._presence_thread))

    def restart(self) -> None:
        """The supervisor's restart: the dead one of the two threads is started again."""
        if self._stopping.is_set() or self.is_alive():
            return
        self.restarts += 1
        log.warning("configuration store threads restarted (%d so far)", self.restarts)
        self._start_threads()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._status_request.set()
        self._cancel_watch()
        for t in (self._watch_thread, self._presence_thread):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)

    def _cancel_watch(self) -> None:
        w = self._watch
        for name in ("cancel", "close"):
            fn = getattr(w, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - a watch that is already gone is cancelled
                    log.debug("cancelling the watch", exc_info=True)
                return

    # -- cfg-etcd: the watch ---------------------------------------------------------------------------------
    def _run_watch(self) -> None:
        attempt = 0
        resync = not self.connected or self.from_cache  # started on the cache: read the prefix first
        while not self._stopping.is_set():
            try:
                if resync:
                    self._offer(self.store.snapshot())
                    resync = False
                self._follow()
            except Compacted as e:
                log.warning("watch from revision %d: %s; reading the prefix again", self.watch_from, e)
                RESYNC.labels(reason="compacted").inc()
                resync = True
            except PermissionDenied as e:
                log.error("configuration store refuses this gateway: %s", e)
                self._set(connected=False, last_error=str(e))
                if self._stopping.wait(BACKOFF[1]):
                    return
                resync = True
            except EtcdError as e:  # unreachable, no leader, a member going down mid-stream
                if self._stopping.is_set():
                    return
                if self.connected:  # it was answering: start the backoff again
                    log.warning("configuration store unreachable: %s (running on revision %d)", e, self.applied)
                    attempt = 0
                self._set(connected=False, last_error=str(e))
                attempt += 1
                base, cap = BACKOFF
                delay = min(cap, base * 2 ** min(attempt, 16))
                if self._stopping.wait(delay / 2 + random.uniform(0, delay / 2)):  # noqa: S311 - jitter
                    return
                # Resume the watch where it broke: etcd replays every revision since, or says it has
                # compacted them away (then: a full resync). Nothing is skipped either way.

    def _follow(self) -> None:
        """Follow the prefix from `watch_from`; returns when stopped."""
        watch = self.store.watch(self.watch_from)
        self._watch = watch
        try:
            if self._stopping.is_set():
                return
            for change in watch:
                self.heartbeat = time.monotonic()
                if self._stopping.is_set():
                    return
                rev = int(change.revision)
                if rev < self.watch_from:
                    continue  # already in the snapshot read for an earlier change
                # The whole prefix at one revision (one range): all tables of a txn or none of them.
                self._offer(self.store.snapshot(), rev)
                self.watch_from = max(self.watch_from, rev + 1)
        finally:
            # What the watch saw of a quiet prefix (etcd's progress notifications) counts as seen: a new
            # watch after an outage starts there, not where the last change was (maybe compacted since).
            self.watch_from = max(self.watch_from, int(getattr(watch, "next_revision", 0) or 0))
            self._watch = None
            watch.close()

    def _offer(self, snap: Any, changed_at: int = 0) -> None:
        """Hand one snapshot to the reload thread unless it holds what runs (or what was refused)."""
        rev = max(_label(snap), changed_at)  # a raw delete leaves no key carrying its revision
        self.watch_from = max(self.watch_from, int(snap.revision) + 1)
        STORE_REVISION.set(rev)
        tables = dict(snap.tables)
        with self._lock:
            self.connected, self.last_error = True, None
            CONNECTED.set(1)
            if self.from_cache:
                self.from_cache = False
                FROM_CACHE.set(0)
            # What runs comes back as a newer revision (a rollback, a push of equal text): the reload
            # answers `unchanged` and the revision becomes the running one. What was refused is not retried.
            if rev <= self.applied and self._applied_tables is not None and tables != self._applied_tables:
                rev = int(snap.revision)  # changed by a delete only: the revision it was read at is newer
            known = rev <= self.applied or (self.rejected is not None and tables == self._rejected_tables)
        if known:
            self._status_request.set()
            return
        assert self.gateway is not None and self.gateway.reloader is not None
        path = self.cache.write(rev, self._own(tables), {"source": self.cfg.url, "read_at": int(snap.revision)})
        fut = self.gateway.reloader.request(f"etcd revision {rev}", str(path), rev)
        answer = fut.result(timeout=APPLY_TIMEOUT)
        if answer.get("applied"):
            self.cache.commit(rev)
            with self._lock:
                if answer.get("result") != "unchanged" or self.applied == 0:
                    self.applied_since = time.time()
                self.applied = rev
                self._applied_tables = tables
                self.rejected = self._rejected_tables = None
            log.info("etcd revision %d applied (%s)", rev, answer.get("result"))
        else:
            problems = list(answer.get("problems") or [answer.get("error") or "not applied"])
            self.cache.discard(rev)
            self._reject(rev, tables, problems, str(answer.get("result", "invalid")), path)
            if answer.get("result") == "invalid":
                self._publish_refused(rev)
            # a rollback: Gateway.apply has published sys.cfg_rollback itself
        self._status_request.set()  # the revisions changed: cfg-presence writes the status key now

    def _reject(self, rev: int, tables: dict[str, str], problems: list[str], result: str, path: Path) -> None:
        with self._lock:
            self._rejected_tables = tables
            self.rejected = Rejected(rev, tuple(shown(p, path) for p in problems[:MAX_PROBLEMS]), result)
        log.error("etcd revision %d not applied (%s); revision %d keeps running", rev, result, self.applied)

    def _publish_refused(self, rev: int) -> None:
        gw = self.gateway
        if gw is None or gw.bus is None or self.rejected is None:
            return
        meta: dict[str, object] = {
            "source": "etcd",
            "refused": rev,
            "running": self.applied,
            "problems": list(self.rejected.problems),
        }
        gw.bus.publish([Frame(0, now_ms(), "sys.cfg_rollback", str(rev), GOOD, meta=meta)])

    # -- cfg-presence: lease and status key ------------------------------------------------------------------
    def _run_presence(self) -> None:
        lease: Any = None
        last_written = 0.0
        next_refresh = 0.0  # a wake-up for the status key does not refresh the lease early
        last_doc: dict[str, Any] | None = None
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            asked = self._status_request.is_set()
            self._status_request.clear()
            try:
                if lease is None:
                    lease = self.store.presence(self.gateway_id, PRESENCE_TTL)
                    next_refresh = time.monotonic() + PRESENCE_TTL / 3
                elif time.monotonic() >= next_refresh:
                    lease.refresh()  # a lease that expired during an outage is granted again
                    next_refresh = time.monotonic() + PRESENCE_TTL / 3
                if not self.connected:
                    self._set(connected=True, last_error=None)
                doc = self.status_document()
                same = last_doc is not None and _without_time(doc) == _without_time(last_doc)
                if asked or not same or time.monotonic() - last_written >= STATUS_REFRESH:
                    self.store.put_status(self.gateway_id, doc)
                    last_doc, last_written = doc, time.monotonic()
            except EtcdUnavailable as e:
                self._set(connected=False, last_error=str(e))
                last_doc = None  # written again once the store answers
                next_refresh = time.monotonic() + PRESENCE_TTL / 3
            except EtcdError as e:  # refused (RBAC): nothing else this thread can do about it
                log.warning("presence/status of %s refused: %s", self.gateway_id, e)
                last_doc = None
                next_refresh = time.monotonic() + PRESENCE_TTL / 3
            except Exception:  # noqa: BLE001 - the presence thread must outlive a surprise
                log.warning("presence/status could not be written", exc_info=True)
                last_doc = None
                next_refresh = time.monotonic() + PRESENCE_TTL / 3
            self._status_request.wait(max(0.05, next_refresh - time.monotonic()))
        if lease is not None:
            try:
                lease.revoke()  # a clean stop: the gateway leaves the fleet now, not after the TTL
            except Exception:  # noqa: BLE001 - the TTL removes it anyway
                log.debug("revoking the presence lease", exc_info=True)

    def status_document(self) -> dict[str, Any]:
        """`/edge/status/v1/{gateway_id}`: what `edge-cfg fleet status` shows of this gateway."""
        gw = self.gateway
        health: dict[str, Any] = {"state": "unknown", "reasons": []}
        if gw is not None:
            try:
                health = gw.status()["health"]
            except Exception as e:  # noqa: BLE001 - the status key still says which revision runs
                health = {"state": "unknown", "reasons": [f"status failed: {type(e).__name__}"]}
        with self._lock:
            rejected = self.rejected
            doc: dict[str, Any] = {
                "gateway_id": self.gateway_id,
                "applied_revision": self.applied,
                "applied_hash": gw.snapshot.revision if gw is not None else None,
                "since": round(self.applied_since, 3),
                "rejected_revision": rejected.revision if rejected else None,
                "rejected_result": rejected.result if rejected else None,
                "problems": list(rejected.problems) if rejected else [],
                "health": health.get("state"),
                "reasons": list(health.get("reasons", []))[:20],
                "version": __version__,
                "from_cache": self.from_cache,
                "updated": round(time.time(), 3),
            }
        return doc

    # -- views -----------------------------------------------------------------------------------------------
    def _set(self, **fields: Any) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self, k, v)
            if "connected" in fields:
                CONNECTED.set(1 if self.connected else 0)
            if "from_cache" in fields:
                FROM_CACHE.set(1 if self.from_cache else 0)

    def status(self) -> dict[str, Any]:
        """`edge-ctl status` → `config_source`."""
        with self._lock:
            r = self.rejected
            return {
                "kind": "etcd",
                "url": self.cfg.url,
                "gateway_id": self.gateway_id,
                "connected": self.connected,
                "from_cache": self.from_cache,
                "applied_revision": self.applied,
                "watch_from": self.watch_from,
                "rejected": {"revision": r.revision, "result": r.result, "problems": list(r.problems)} if r else None,
                "last_error": self.last_error,
                "cache": str(self.cache.root),
            }

    def summary(self) -> str:
        """For STATUS=: `etcd rev 42` or `etcd OFFLINE (cache rev 42)`."""
        with self._lock:
            if self.connected and not self.from_cache:
                return f"etcd rev {self.applied}" + (f" (refused {self.rejected.revision})" if self.rejected else "")
            return f"etcd OFFLINE (cache rev {self.applied})"

    def health(self) -> list[str]:
        with self._lock:
            reasons = []
            if not self.connected:
                why = f": {self.last_error}" if self.last_error else ""
                reasons.append(f"configuration store unreachable{why}; running on cached revision {self.applied}")
            return reasons


def _label(snap: Any) -> int:
    """The revision a snapshot's configuration was written at (what `edge-cfg push` printed), not the
    store's revision it was read at."""
    return int(getattr(snap, "config_revision", snap.revision))


def _without_time(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "updated"}
