"""The Gateway: the composition root. It builds every worker of a running edge-gateway process from
the snapshot and the installed plugins, and owns their lifecycle.

    driver workers (one thread per endpoint, by plugin) ─► FrameBus ─► WalWriter ─► WAL ─► Runner ─► connector ─► cloud
                                                                      └─► TailHub (edge-ctl tail)
    connector ◄─ cloud command ─► Downlink ─► WriteRouter (runtime/commands.py) ─► owning plugin ─► worker ─► ack
    Reloader (file change, SIGHUP, edge-ctl reload) ─► apply(): a plan of the smallest live change

The parts, each in its module: the worker table (runtime/workers.py: endpoint → plugin + thread,
copy-on-write), reload as a plan with apply and rollback (runtime/plan.py), status and health
(runtime/status.py), control and cloud commands (runtime/commands.py).

`start()` brings them up in data-flow order (WAL first, so nothing a worker produces can be lost;
the delivery runner last but one, then the control socket and /metrics); `stop()` takes them down in the
order that keeps every frame: workers stop, the bus is drained into the WAL and fsynced, the delivery
runner finishes its in-flight batches and says `offline`, the WAL writer closes (cursor acks persisted).
The supervisor (runtime/supervisor.py) watches `watched()` and talks to systemd.

`apply(new)` is hot reload's one way in (runtime/reload.py decides when): each driver plugin plans
what its endpoints need (a changed endpoint reopens its line, a changed device restarts that unit on
its line, a changed tag map is swapped under the running unit), a changed connector restarts the
delivery runner on the same WAL cursor. If any step fails, every step is undone from the previous snapshot
and a `sys.cfg_rollback` frame records it. The bus, the WAL and the control socket are opened once
per process: a change there is reported as needing a restart and the running values are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from edge_gateway import __version__
from edge_gateway.bus import open_bus_and_wal
from edge_gateway.bus.wal import WalLocked
from edge_gateway.config.model import GatewayCfg, Snapshot
from edge_gateway.core import registry
from edge_gateway.core.driver import RuntimeContext
from edge_gateway.core.frame import GOOD, Frame, now_ms
from edge_gateway.delivery.commands import Downlink
from edge_gateway.delivery.ledger import SeqLedger
from edge_gateway.delivery.runner import Runner
from edge_gateway.metrics import REGISTRY, MetricsServer
from edge_gateway.runtime import commands, heap, plan, status
from edge_gateway.runtime.control import ControlServer, TailHub
from edge_gateway.runtime.reload import ApplyError, Reloader
from edge_gateway.runtime.supervisor import Notifier, Supervisor, Watched
from edge_gateway.runtime.workers import WorkerTable

log = logging.getLogger(__name__)

# A reload stops and starts worker threads (each join is bounded by 5 s) and may restart the delivery runner
# (10 s): a reload thread silent for longer than this is hung.
RELOAD_STALE_AFTER = commands.RELOAD_TIMEOUT
# The configuration store's threads: cfg-presence beats every few seconds; cfg-etcd may wait for a
# reload (APPLY_TIMEOUT) or a store timeout with no beat.
SOURCE_STALE_AFTER = 180.0
# Opened once per process; a change in gateway.yml needs a restart (the reload answer says so).
RESTART_ONLY = ("bus", "wal", "control_socket")


class BindError(OSError):
    """A socket the configuration asks for cannot be bound; the message names the address and the setting."""


def _where(directory: str, *keys: str) -> str:
    """gateway.yml's line of a setting, for a bind error: read then, so the running gateway imports
    PyYAML (runtime/gwfile.py) only on that path."""
    from edge_gateway.runtime.gwfile import where

    return where(directory, *keys)


class Gateway:
    def __init__(
        self, snapshot: Snapshot, notifier: Notifier | None = None, metrics: bool = True, source: Any = None
    ) -> None:
        """`source`: a configuration store (runtime/fleet.py EtcdSource) instead of the files of
        `snapshot.directory`; it feeds the same reload thread."""
        self.snapshot = snapshot
        self.source = source
        self.notifier = notifier
        self.serve_metrics = metrics
        self.bus: Any = None
        self.wal: Any = None
        self.writer: Any = None
        self.table = WorkerTable()  # endpoint id → (driver plugin, worker thread): runtime/workers.py
        self.runner: Runner | None = None
        self.downlink: Downlink | None = None
        self.tail = TailHub()
        self.control = ControlServer(snapshot.gateway.control_socket, self.tail)
        self.supervisor: Supervisor | None = None
        # Made now, so edits and SIGHUPs from this moment on are seen; its thread starts with the workers.
        self.reloader = Reloader(self, snapshot.directory) if snapshot.directory else None
        if source is not None:
            self.reloader = Reloader(
                self, snapshot.directory, load=source.load, watch_files=False, store_revision=source.applied
            )
        self._metrics_server: Any = None
        self._metrics_addr: tuple[str, int] | None = None
        self._watched: list[Watched] = []
        self._applying = False
        self._lock = self.table.lock  # one lock: the worker table's (reload, restarts, stop)
        self.started_at = 0.0
        self.stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        snap = self.snapshot
        self.started_at = time.monotonic()
        try:
            self.control.bind()  # first: a second gateway on the same config fails here, before the WAL
        except OSError as e:
            at = _where(snap.directory, "control", "socket")
            raise BindError(f"cannot bind the control socket {self.control.path} ({at}): {e}") from e
        try:
            self.bus, self.wal, self.writer = open_bus_and_wal(snap.gateway)
            if not self.writer.is_alive():
                self.writer.start()
            self.writer.add_listener(self.tail.publish_runs)
            for name, plugin in registry.drivers().items():
                for ep_id in plugin.endpoints(snap):
                    self.table.put(ep_id, name, plugin.start(ep_id, snap, self._context(snap)))
            self._start_delivery(snap)
            if self.reloader is not None:
                self.reloader.start()
            if self.source is not None:
                self.source.start(self)
            commands.register(self)
            self._serve_metrics(snap.gateway)  # before the control socket answers: ready means scrapeable
            self.control.start()
            self._watched = self._build_watched()
            self.supervisor = Supervisor(self.watched, self.summary, self.notifier)
            self.supervisor.start()
            heap.settle()  # the configuration (from the loader's child) is here to stay
        except (WalLocked, OSError) as e:
            # Expected at start (the WAL or a socket is another process's, a port is taken): the one-line
            # reason is the caller's "cannot start: ..."; a traceback would only bury it.
            log.debug("gateway failed to start: %s", e)
            self.stop()
            raise
        except BaseException:
            log.exception("gateway failed to start; stopping what already runs")
            self.stop()
            raise
        lines = sum(1 for e in self.table.snapshot().values() if registry.driver(e.plugin).status_section == "lines")
        log.info(
            "gateway %s running: %d line(s), %d MQTT source(s), revision %s",
            __version__,
            lines,
            len(self.table) - lines,
            snap.revision[:12],
            extra={"config": snap.directory, "revision": snap.revision},
        )

    def stop(self) -> None:
        """Graceful and idempotent: keeps every frame (see the module docstring for the order)."""
        with self._lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
        t0 = time.monotonic()
        if self.supervisor is not None:
            self.supervisor.stopping()  # STOPPING=1
            self.supervisor.stop()
        if self.downlink is not None:
            self.downlink.accepting = False
        if self.source is not None:
            self.source.stop()  # no new revision from now on; the presence lease is revoked
        self.control.stop()
        if self.reloader is not None and self.reloader.is_alive():
            self.reloader.stop()
        for ep_id, entry in self.table.snapshot().items():  # lines first, then sources (start order)
            try:
                entry.worker.stop()
            except Exception:
                log.exception("%s worker %s did not stop cleanly", entry.plugin, ep_id)
        if self.writer is not None and self.writer.is_alive():
            self.writer.flush()  # everything the lines produced is committed before the runner goes
        self._stop_delivery()
        if self.writer is not None:
            self.writer.stop()
        self._close_metrics()
        if self.wal is None:
            return  # never opened (a start that failed early): nothing was committed, nothing to report
        committed = self.wal.committed_seq
        next_seq = self.bus.next_seq if self.bus is not None else None
        log.info(
            "gateway stopped in %.2fs; WAL committed through seq %s",
            time.monotonic() - t0,
            committed,
            extra={"committed_seq": committed, "next_seq": next_seq},
        )

    def _context(self, snap: Snapshot) -> RuntimeContext:
        return RuntimeContext(bus=self.bus, state_dir=snap.gateway.wal.dir)

    # -- workers ---------------------------------------------------------------------------------------------
    def _restart_worker(self, ep_id: str) -> None:
        """The supervisor's restart of a crashed worker; a no-op when a reload replaced or removed it."""
        with self._lock:
            entry = self.table.get(ep_id)
            if self.stopped.is_set() or entry is None or entry.worker.is_alive():
                return
            entry.worker.stop()
            plugin = registry.driver(entry.plugin)
            self.table.put(ep_id, entry.plugin, plugin.start(ep_id, self.snapshot, self._context(self.snapshot)))

    # -- delivery and /metrics ----------------------------------------------------------------------------------
    def _start_delivery(self, snap: Snapshot) -> None:
        for conn in snap.connectors.values():  # the loader allows exactly one
            state = snap.gateway.wal.dir  # session and command-seq state live beside the WAL
            ledger = SeqLedger(Path(state) / "commands" / f"{conn.id}.seqs", conn.cmd_dedup)
            self.downlink = Downlink(
                conn.id,
                commands.WriteRouter(lambda: self.snapshot, self.table),
                self.bus.publish,
                max_bytes=conn.cmd_max_bytes,
                ledger=ledger,
            )
            self.runner = Runner(
                conn, self.wal.cursor(conn.id), record=self.bus.publish, downlink=self.downlink, state_dir=state
            )
            self.writer.add_listener(self.runner.wake)
            self.runner.start()

    def _stop_delivery(self) -> None:
        """In-flight batches finish (bounded), `offline` is published, the cursor keeps its acks."""
        up, self.runner, self.downlink = self.runner, None, None
        if up is None:
            return
        up.stop()
        if self.writer is not None:
            self.writer.remove_listener(up.wake)

    def _reopen_delivery(self, snap: Snapshot) -> None:
        was = self.runner.cfg.id if self.runner is not None else None
        self._stop_delivery()
        for conn in snap.connectors.values():
            if was is not None and was != conn.id:
                self.wal.rename_cursor(was, conn.id)
        self._start_delivery(snap)

    def _serve_metrics(self, g: GatewayCfg) -> None:
        """Bind the new address before closing the old one: a taken port fails here with nothing lost."""
        if not self.serve_metrics or self._metrics_addr == (g.metrics_host, g.metrics_port):
            return
        try:
            server = MetricsServer(g.metrics_host, g.metrics_port, REGISTRY)
        except OSError as e:
            at = _where(self.snapshot.directory, "metrics", "listen")
            raise BindError(f"cannot serve /metrics on {g.metrics_host}:{g.metrics_port} ({at}): {e}") from e
        server.start()
        self._close_metrics()
        self._metrics_server, self._metrics_addr = server, (g.metrics_host, g.metrics_port)

    def _close_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = self._metrics_addr = None

    # -- hot reload (runtime/plan.py) -----------------------------------------------------------------------
    def apply(self, new: Snapshot) -> dict[str, Any]:
        """Make `new` the running configuration by the smallest change; ApplyError after a rollback."""
        with self._lock:
            if self.stopped.is_set():
                raise ApplyError("the gateway is stopping")
            old = self.snapshot
            new, pending = self._keep_restart_only(old, new)
            p = plan.make(old, new)
            answer: dict[str, Any] = {"applied": True, "revision": new.revision, "restart_required": pending}
            if pending:
                log.warning("gateway.yml: %s change(s) need a restart to take effect", ", ".join(pending))
            if p.empty:
                self.snapshot = new
                return {**answer, "result": "unchanged", "changes": []}
            self._applying = True  # the supervisor watches only the reload thread meanwhile
            try:
                plan.run_steps(p.steps, new, self.table, self._context(new))
                if p.connector_changed:
                    self._reopen_delivery(new)
                self._serve_metrics(new.gateway)
                self.snapshot = new
            except Exception as e:
                log.exception("applying configuration %s failed; restoring %s", new.revision[:12], old.revision[:12])
                plan.rollback_steps(p, self.table, self._context(old), self._undo)
                if p.connector_changed:
                    self._undo("uplink", self._reopen_delivery, old)
                self._undo("/metrics", self._serve_metrics, old.gateway)
                self._record_rollback(old, new, e)
                raise ApplyError(f"{type(e).__name__}: {e}") from e
            finally:
                self._watched = self._build_watched()
                self._applying = False
            log.info("configuration %s applied: %s", new.revision[:12], "; ".join(p.impact.lines()))
            return {**answer, "result": "ok", "changes": p.impact.lines()}

    @staticmethod
    def _keep_restart_only(old: Snapshot, new: Snapshot) -> tuple[Snapshot, list[str]]:
        g_old, g_new = old.gateway, new.gateway
        pending = [f for f in RESTART_ONLY if getattr(g_old, f) != getattr(g_new, f)]
        if not pending:
            return new, []
        kept = dataclasses.replace(g_new, **{f: getattr(g_old, f) for f in pending})
        return dataclasses.replace(new, gateway=kept), pending

    @staticmethod
    def _undo(what: str, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - one part that cannot be restored must not stop the others
            log.exception("rollback: %s could not be restored", what)

    def _record_rollback(self, old: Snapshot, new: Snapshot, error: Exception) -> None:
        meta: dict[str, object] = {"refused": new.revision, "running": old.revision, "error": f"{error}"}
        self.bus.publish([Frame(0, now_ms(), "sys.cfg_rollback", new.revision, GOOD, meta=meta)])

    # -- supervision ------------------------------------------------------------------------------------------
    def _build_watched(self) -> list[Watched]:
        w: list[Watched] = []
        for ep_id, entry in self.table.snapshot().items():
            plugin = registry.driver(entry.plugin)
            prefix = "line" if plugin.status_section == "lines" else plugin.name
            w.append(
                Watched(
                    f"{prefix}:{ep_id}",
                    target=partial(self.table.worker, ep_id),  # a restart or reload replaces it
                    stale_after=plugin.stale_after(ep_id, self.snapshot, entry.worker),
                    restart=partial(self._restart_worker, ep_id),
                )
            )
        flush_s = self.snapshot.gateway.wal.flush_ms / 1000
        w.append(Watched("wal", target=lambda: self.writer, stale_after=max(10.0, 50 * flush_s)))
        if self.runner is not None:
            up = self.runner
            w.append(Watched("uplink", target=lambda: up, stale_after=up.stale_after))
        if self.reloader is not None:
            rl = self.reloader
            w.append(Watched("reload", target=lambda: rl, stale_after=RELOAD_STALE_AFTER, restart=rl.restart))
        if self.source is not None:
            src = self.source
            w.append(Watched(src.name, target=lambda: src, stale_after=SOURCE_STALE_AFTER, restart=src.restart))
        return w

    def watched(self) -> list[Watched]:
        """While a reload swaps workers, only the reload thread is judged (a worker stopped on purpose
        is not dead); a reload that hangs still stops the keep-alives."""
        if self._applying:
            return [w for w in self._watched if w.name == "reload"]
        return self._watched

    def workers(self) -> list[Any]:
        """Every worker thread (they all have `heartbeat`)."""
        out: list[Any] = [e.worker for e in self.table.snapshot().values()]
        if self.writer is not None:
            out.append(self.writer)
        if self.runner is not None:
            out.append(self.runner)
        if self.reloader is not None:
            out.append(self.reloader)
        if self.source is not None:
            out.append(self.source)
        return out

    # -- status (runtime/status.py) -----------------------------------------------------------------------------
    def summary(self) -> str:
        return status.summary(self)

    def status(self) -> dict[str, Any]:
        return status.status(self)

    def request_reload(self, reason: str) -> None:
        """SIGHUP: queue a reload and return at once (the answer is logged)."""
        if self.reloader is not None:
            self.reloader.request(reason)
