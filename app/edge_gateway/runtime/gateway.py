"""The Gateway: one object that owns every worker of a running edge-gateway process.

    lines (one thread per endpoint) ─► FrameBus ─► WalWriter ─► WAL ─► Uplink (MQTT 5) ─► broker
    MQTT sources (one per local broker) ─┘
                                                        └─► TailHub (edge-ctl tail)
    Uplink ◄─ cloud command ─► Downlink ─► the owning line's submit_write ─► ack
    Reloader (file change, SIGHUP, edge-ctl reload) ─► apply(): the smallest live change

`start()` brings them up in data-flow order (WAL first, so nothing a line produces can be lost;
the uplink last but one, then the control socket and /metrics); `stop()` takes them down in the
order that keeps every frame: lines stop polling, the bus is drained into the WAL and fsynced,
the uplink finishes its in-flight batches and says `offline`, the WAL writer closes (cursor acks
persisted). The supervisor (runtime/supervisor.py) watches `watched()` and talks to systemd.

`apply(new)` is hot reload's one way in (runtime/reload.py decides when): it diffs the snapshots and
touches only what changed: a changed endpoint reopens its line, a changed driver restarts that unit
on its line, a changed tag map is swapped under the running unit, a changed connector restarts the
uplink on the same WAL cursor. If any step fails, every line, source and uplink the reload touched
is restarted from the previous snapshot and a `sys.cfg_rollback` frame records it. The bus, the WAL
and the control socket are opened once per process: a change there is reported as needing a restart
and the running values are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

from edge_gateway import __version__
from edge_gateway.acquisition import start_line
from edge_gateway.acquisition.mqtt import MqttSource, start_source
from edge_gateway.bus import open_bus_and_wal
from edge_gateway.bus.frame import GOOD, Frame, Value, now_ms
from edge_gateway.config.diff import Impact, diff
from edge_gateway.config.model import Endpoint, GatewayCfg, Snapshot, Variable
from edge_gateway.delivery.commands import Downlink
from edge_gateway.delivery.ledger import SeqLedger
from edge_gateway.delivery.runner import Runner
from edge_gateway.metrics import REGISTRY, MetricsServer
from edge_gateway.runtime.control import ControlError, ControlServer, TailHub
from edge_gateway.runtime.gwfile import where
from edge_gateway.runtime.reload import ApplyError, Reloader
from edge_gateway.runtime.supervisor import Notifier, Supervisor, Watched

log = logging.getLogger(__name__)

# An MQTT source stamps its heartbeat at least every 0.1 s, except inside a connect attempt (at most
# paho's 5 s connect timeout, plus a TLS handshake): beyond this it is hung.
MQTT_SOURCE_STALE_AFTER = 15.0
# A reload stops and starts line threads (each join is bounded by 5 s) and may restart the uplink
# (10 s): a reload thread silent for longer than this is hung.
RELOAD_STALE_AFTER = 120.0
# Opened once per process; a change in gateway.yml needs a restart (the reload answer says so).
RESTART_ONLY = ("bus", "wal", "control_socket")


class BindError(OSError):
    """A socket the configuration asks for cannot be bound; the message names the address and the setting."""


class Gateway:
    def __init__(self, snapshot: Snapshot, notifier: Notifier | None = None, metrics: bool = True) -> None:
        self.snapshot = snapshot
        self.notifier = notifier
        self.serve_metrics = metrics
        self.bus: Any = None
        self.wal: Any = None
        self.writer: Any = None
        self.lines: dict[str, Any] = {}
        self.sources: dict[str, MqttSource] = {}  # MQTT source endpoints (acquisition/mqtt)
        self.uplink: Runner | None = None
        self.downlink: Downlink | None = None
        self.tail = TailHub()
        self.control = ControlServer(snapshot.gateway.control_socket, self.tail)
        self.supervisor: Supervisor | None = None
        # Made now, so edits and SIGHUPs from this moment on are seen; its thread starts with the workers.
        self.reloader = Reloader(self, snapshot.directory) if snapshot.directory else None
        self._metrics_server: Any = None
        self._metrics_addr: tuple[str, int] | None = None
        self._watched: list[Watched] = []
        self._applying = False
        self._lock = threading.RLock()
        self.started_at = 0.0
        self.stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        snap = self.snapshot
        self.started_at = time.monotonic()
        try:
            self.control.bind()  # first: a second gateway on the same config fails here, before the WAL
        except OSError as e:
            at = where(snap.directory, "control", "socket")
            raise BindError(f"cannot bind the control socket {self.control.path} ({at}): {e}") from e
        try:
            self.bus, self.wal, self.writer = open_bus_and_wal(snap.gateway)
            if not self.writer.is_alive():
                self.writer.start()
            self.writer.add_listener(self.tail.publish)
            for ep_id in snap.endpoints:
                self._start_line(ep_id, snap)
            for ep_id in snap.mqtt_endpoints:
                self._start_source(ep_id, snap)
            self._start_uplink(snap)
            if self.reloader is not None:
                self.reloader.start()
            self._register_commands()
            self.control.start()
            self._serve_metrics(snap.gateway)
            self._watched = self._build_watched()
            self.supervisor = Supervisor(self.watched, self.summary, self.notifier)
            self.supervisor.start()
        except BaseException:
            log.exception("gateway failed to start; stopping what already runs")
            self.stop()
            raise
        log.info(
            "gateway %s running: %d line(s), %d MQTT source(s), revision %s",
            __version__,
            len(self.lines),
            len(self.sources),
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
        self.control.stop()
        if self.reloader is not None and self.reloader.is_alive():
            self.reloader.stop()
        for ep_id, line in list(self.lines.items()):
            try:
                line.stop()
            except Exception:
                log.exception("line %s did not stop cleanly", ep_id)
        for ep_id, src in list(self.sources.items()):
            try:
                src.stop()
            except Exception:
                log.exception("MQTT source %s did not stop cleanly", ep_id)
        if self.writer is not None and self.writer.is_alive():
            self.writer.flush()  # everything the lines produced is committed before the uplink goes
        self._stop_uplink()
        if self.writer is not None:
            self.writer.stop()
        self._close_metrics()
        committed = self.wal.committed_seq if self.wal is not None else None
        next_seq = self.bus.next_seq if self.bus is not None else None
        log.info(
            "gateway stopped in %.2fs; WAL committed through seq %s",
            time.monotonic() - t0,
            committed,
            extra={"committed_seq": committed, "next_seq": next_seq},
        )

    # -- lines -----------------------------------------------------------------------------------------------
    def _start_line(self, ep_id: str, snap: Snapshot) -> None:
        drivers = snap.drivers_on(ep_id)
        if not drivers:
            log.warning("endpoint %s has no drivers: not opened", ep_id)
            return
        ids = {d.id for d in drivers}
        variables = tuple(v for v in snap.variables if v.driver_id in ids)
        self.lines[ep_id] = start_line(snap.endpoints[ep_id], drivers, variables, self.bus)

    def _stop_line(self, ep_id: str) -> None:
        line = self.lines.pop(ep_id, None)
        if line is not None:
            line.stop()

    def _restart_line(self, ep_id: str) -> None:
        """The supervisor's restart of a crashed line; a no-op when a reload replaced or removed it."""
        with self._lock:
            old = self.lines.get(ep_id)
            if self.stopped.is_set() or old is None or old.is_alive():
                return
            old.stop()
            self._start_line(ep_id, self.snapshot)

    # -- MQTT sources -----------------------------------------------------------------------------------------
    def _start_source(self, ep_id: str, snap: Snapshot) -> None:
        drivers = snap.mqtt_drivers_on(ep_id)
        if not drivers:
            log.warning("MQTT endpoint %s has no drivers: not connected", ep_id)
            return
        ids = {d.id for d in drivers}
        tags = tuple(t for t in snap.mqtt_tags if t.driver_id in ids)
        self.sources[ep_id] = start_source(
            snap.mqtt_endpoints[ep_id], drivers, tags, self.bus, state_dir=snap.gateway.wal.dir
        )

    def _stop_source(self, ep_id: str) -> None:
        src = self.sources.pop(ep_id, None)
        if src is not None:
            src.stop()

    def _restart_source(self, ep_id: str) -> None:
        with self._lock:
            old = self.sources.get(ep_id)
            if self.stopped.is_set() or old is None or old.is_alive():
                return
            old.stop()
            self._start_source(ep_id, self.snapshot)

    # -- uplink and /metrics ----------------------------------------------------------------------------------
    def _start_uplink(self, snap: Snapshot) -> None:
        for conn in snap.connectors.values():  # the loader allows exactly one
            state = snap.gateway.wal.dir  # session and command-seq state live beside the WAL
            ledger = SeqLedger(Path(state) / "commands" / f"{conn.id}.seqs", conn.cmd_dedup)
            self.downlink = Downlink(
                conn.id,
                lambda: self.snapshot,
                self.submit_write,
                self.bus.publish,
                max_bytes=conn.cmd_max_bytes,
                ledger=ledger,
            )
            self.uplink = Runner(
                conn, self.wal.cursor(conn.id), record=self.bus.publish, downlink=self.downlink, state_dir=state
            )
            self.writer.add_listener(self.uplink.wake)
            self.uplink.start()

    def _stop_uplink(self) -> None:
        """In-flight batches finish (bounded), `offline` is published, the cursor keeps its acks."""
        up, self.uplink, self.downlink = self.uplink, None, None
        if up is None:
            return
        up.stop()
        if self.writer is not None:
            self.writer.remove_listener(up.wake)

    def _serve_metrics(self, g: GatewayCfg) -> None:
        """Bind the new address before closing the old one: a taken port fails here with nothing lost."""
        if not self.serve_metrics or self._metrics_addr == (g.metrics_host, g.metrics_port):
            return
        try:
            server = MetricsServer(g.metrics_host, g.metrics_port, REGISTRY)
        except OSError as e:
            at = where(self.snapshot.directory, "metrics", "listen")
            raise BindError(f"cannot serve /metrics on {g.metrics_host}:{g.metrics_port} ({at}): {e}") from e
        server.start()
        self._close_metrics()
        self._metrics_server, self._metrics_addr = server, (g.metrics_host, g.metrics_port)

    def _close_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = self._metrics_addr = None

    # -- hot reload ---------------------------------------------------------------------------------------------
    def apply(self, new: Snapshot) -> dict[str, Any]:
        """Make `new` the running configuration by the smallest change; ApplyError after a rollback."""
        with self._lock:
            if self.stopped.is_set():
                raise ApplyError("the gateway is stopping")
            old = self.snapshot
            new, pending = self._keep_restart_only(old, new)
            impact = diff(old, new)
            answer: dict[str, Any] = {"applied": True, "revision": new.revision, "restart_required": pending}
            if pending:
                log.warning("gateway.yml: %s change(s) need a restart to take effect", ", ".join(pending))
            if impact.empty:
                self.snapshot = new
                return {**answer, "result": "unchanged", "changes": []}
            self._applying = True  # the supervisor watches only the reload thread meanwhile
            try:
                self._apply(old, new, impact)
                self.snapshot = new
            except Exception as e:
                log.exception("applying configuration %s failed; restoring %s", new.revision[:12], old.revision[:12])
                self._restore(old, new, impact)
                self._record_rollback(old, new, e)
                raise ApplyError(f"{type(e).__name__}: {e}") from e
            finally:
                self._watched = self._build_watched()
                self._applying = False
            log.info("configuration %s applied: %s", new.revision[:12], "; ".join(impact.lines()))
            return {**answer, "result": "ok", "changes": impact.lines()}

    @staticmethod
    def _keep_restart_only(old: Snapshot, new: Snapshot) -> tuple[Snapshot, list[str]]:
        g_old, g_new = old.gateway, new.gateway
        pending = [f for f in RESTART_ONLY if getattr(g_old, f) != getattr(g_new, f)]
        if not pending:
            return new, []
        kept = dataclasses.replace(g_new, **{f: getattr(g_old, f) for f in pending})
        return dataclasses.replace(new, gateway=kept), pending

    def _apply(self, old: Snapshot, new: Snapshot, impact: Impact) -> None:
        fresh = set(impact.endpoints_changed) | set(impact.endpoints_added)  # lines opened anew below
        for ep_id in (*impact.endpoints_removed, *impact.endpoints_changed):
            self._stop_line(ep_id)
        for ep_id in sorted(fresh):
            self._start_line(ep_id, new)
        for d in impact.drivers_removed:
            line = self.lines.get(old.drivers[d].endpoint_id)
            if line is not None and old.drivers[d].endpoint_id not in fresh:
                line.remove_driver(d)
        for d in (*impact.drivers_added, *impact.drivers_changed):
            ep_id = new.drivers[d].endpoint_id
            if ep_id in fresh:
                continue
            line = self.lines.get(ep_id)
            if line is None:  # the endpoint had no drivers until now: open its line with all of them
                self._start_line(ep_id, new)
                fresh.add(ep_id)
            else:
                line.restart_driver(new.drivers[d], new.variables_of(d))
        for d in impact.variables_changed:
            line = self.lines.get(new.drivers[d].endpoint_id)
            if line is not None and new.drivers[d].endpoint_id not in fresh:
                line.update_variables(d, new.variables_of(d))
        for ep_id in [e for e in self.lines if not new.drivers_on(e)]:
            self._stop_line(ep_id)  # its last driver went away
        for ep_id in (*impact.mqtt_sources_removed, *impact.mqtt_sources_changed):
            self._stop_source(ep_id)
        for ep_id in (*impact.mqtt_sources_changed, *impact.mqtt_sources_added):
            self._start_source(ep_id, new)
        for d in impact.mqtt_tags_changed:
            src = self.sources.get(new.mqtt_drivers[d].endpoint_id)
            if src is not None:
                src.update_tags(d, new.mqtt_tags_of(d))
        if impact.connectors_changed:
            self._reopen_uplink(new)
        self._serve_metrics(new.gateway)

    def _restore(self, old: Snapshot, new: Snapshot, impact: Impact) -> None:
        """Put back everything the failed reload may have touched, from `old`; untouched workers keep running."""
        touched: dict[str, set[str]] = {e: set() for e in (*impact.endpoints_added, *impact.endpoints_removed)}
        touched.update({e: set() for e in impact.endpoints_changed})
        for d in (*impact.drivers_removed, *impact.drivers_changed, *impact.variables_changed):
            touched.setdefault(old.drivers[d].endpoint_id, set()).add(d)
        for d in (*impact.drivers_added, *impact.drivers_changed, *impact.variables_changed):
            touched.setdefault(new.drivers[d].endpoint_id, set()).add(d)
        sources = {*impact.mqtt_sources_added, *impact.mqtt_sources_removed, *impact.mqtt_sources_changed}
        sources |= {old.mqtt_drivers[d].endpoint_id for d in impact.mqtt_tags_changed}
        for ep_id, drivers in sorted(touched.items()):
            self._undo(f"line {ep_id}", self._restore_line, ep_id, drivers, old)
        for ep_id in sorted(sources):
            self._undo(f"MQTT source {ep_id}", self._reopen_source, ep_id, old)
        if impact.connectors_changed:
            self._undo("uplink", self._reopen_uplink, old)
        self._undo("/metrics", self._serve_metrics, old.gateway)

    def _restore_line(self, ep_id: str, drivers: set[str], old: Snapshot) -> None:
        """A line still open on its old endpoint gets its units back in place (the port stays open);
        any other is reopened from `old`."""
        line = self.lines.get(ep_id)
        if line is None or ep_id not in old.endpoints or line.endpoint != old.endpoints[ep_id]:
            self._stop_line(ep_id)
            if ep_id in old.endpoints:
                self._start_line(ep_id, old)
            return
        for d in sorted(drivers):
            if d in old.drivers and old.drivers[d].endpoint_id == ep_id:
                line.restart_driver(old.drivers[d], old.variables_of(d))
            else:
                line.remove_driver(d)
        if not old.drivers_on(ep_id):
            self._stop_line(ep_id)

    @staticmethod
    def _undo(what: str, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - one part that cannot be restored must not stop the others
            log.exception("rollback: %s could not be restored", what)

    def _reopen_source(self, ep_id: str, snap: Snapshot) -> None:
        self._stop_source(ep_id)
        if ep_id in snap.mqtt_endpoints:
            self._start_source(ep_id, snap)

    def _reopen_uplink(self, snap: Snapshot) -> None:
        was = self.uplink.cfg.id if self.uplink is not None else None
        self._stop_uplink()
        for conn in snap.connectors.values():
            if was is not None and was != conn.id:
                self.wal.rename_cursor(was, conn.id)
        self._start_uplink(snap)

    def _record_rollback(self, old: Snapshot, new: Snapshot, error: Exception) -> None:
        meta: dict[str, object] = {"refused": new.revision, "running": old.revision, "error": f"{error}"}
        self.bus.publish([Frame(0, now_ms(), "sys.cfg_rollback", new.revision, GOOD, meta=meta)])

    def submit_write(self, var: Variable, value: Value) -> Future[None]:
        """Route a validated cloud command to the line that owns the tag's driver."""
        driver = self.snapshot.drivers.get(var.driver_id)
        line = self.lines.get(driver.endpoint_id) if driver else None
        if line is None or not line.is_alive():
            raise ControlError(f"the line of {var.tag} is not running")
        fut: Future[None] = line.submit_write(var, value)
        return fut

    # -- supervision ------------------------------------------------------------------------------------------
    def _build_watched(self) -> list[Watched]:
        w: list[Watched] = []
        for ep_id in self.lines:
            w.append(
                Watched(
                    f"line:{ep_id}",
                    target=partial(self.lines.get, ep_id),  # a restart or reload replaces it
                    stale_after=self._line_stale_after(ep_id),
                    restart=lambda ep_id=ep_id: self._restart_line(ep_id),  # type: ignore[misc]
                )
            )
        for ep_id in self.sources:
            w.append(
                Watched(
                    f"mqtt:{ep_id}",
                    target=partial(self.sources.get, ep_id),
                    stale_after=MQTT_SOURCE_STALE_AFTER,
                    restart=lambda ep_id=ep_id: self._restart_source(ep_id),  # type: ignore[misc]
                )
            )
        flush_s = self.snapshot.gateway.wal.flush_ms / 1000
        w.append(Watched("wal", target=lambda: self.writer, stale_after=max(10.0, 50 * flush_s)))
        if self.uplink is not None:
            up = self.uplink
            w.append(Watched("uplink", target=lambda: up, stale_after=up.stale_after))
        if self.reloader is not None:
            rl = self.reloader
            w.append(Watched("reload", target=lambda: rl, stale_after=RELOAD_STALE_AFTER, restart=rl.restart))
        return w

    def _line_stale_after(self, ep_id: str) -> float:
        """A poll cycle of a line may take one polling period plus, when units are dead, a full
        timeout × (retry+1) for each of its requests; beyond that (+ margin) the line is hung."""
        ep: Endpoint = self.snapshot.endpoints[ep_id]
        drivers = self.snapshot.drivers_on(ep_id)
        line = self.lines.get(ep_id)
        try:
            requests = max(1, len(line.plan())) if line is not None else len(drivers)
        except Exception:  # noqa: BLE001 - plan() is informative only
            requests = len(drivers)
        polling = max(d.modbus.polling for d in drivers)
        retry = max(d.modbus.retry for d in drivers)
        return polling + ep.timeout * (retry + 1) * requests + 10.0

    def watched(self) -> list[Watched]:
        """While a reload swaps workers, only the reload thread is judged (a worker stopped on purpose
        is not dead); a reload that hangs still stops the keep-alives."""
        if self._applying:
            return [w for w in self._watched if w.name == "reload"]
        return self._watched

    def workers(self) -> list[Any]:
        """Every worker thread (they all have `heartbeat`)."""
        out: list[Any] = [*self.lines.values(), *self.sources.values()]
        if self.writer is not None:
            out.append(self.writer)
        if self.uplink is not None:
            out.append(self.uplink)
        if self.reloader is not None:
            out.append(self.reloader)
        return out

    # -- status -------------------------------------------------------------------------------------------------
    def summary(self) -> str:
        up = sum(1 for line in self.lines.values() if line.is_alive())
        parts = [f"lines {up}/{len(self.lines)}"]
        if self.sources:
            parts.append(self._sources_summary())
        if self.uplink is not None:
            parts.append(f"uplink {self.uplink.state.value}")
            parts.append(f"backlog {self.uplink.cursor.lag}")
        if self.wal is not None and self.wal.fault is not None:  # commits failing (a full disk): producers held
            parts.append(f"wal FAULT {self.wal.fault}")
        parts.append(f"rev {self.snapshot.revision[:8]}")
        return ", ".join(parts)

    def _sources_summary(self) -> str:
        """`mqtt 1/1` and, when not all is well, which drivers: `mqtt 1/1 (lab_sensors degraded)`."""
        up = sum(1 for s in self.sources.values() if s.is_alive() and s.connected)
        unwell = [f"{d} {s.health(d)}" for s in self.sources.values() for d in s.driver_ids if s.health(d) != "ok"]
        return f"mqtt {up}/{len(self.sources)}" + (f" ({', '.join(unwell)})" if unwell else "")

    def status(self) -> dict[str, Any]:
        """`edge-ctl status` (and `--json`): every worker's figures plus `health`, the service's verdict.

        `liveness` is what the watchdog judges (every worker thread alive and making progress);
        `health` is whether the gateway does its job: `healthy`, `degraded` (running, but something it
        serves is not: the uplink is not connected, a line is down, a device is in Fault, an MQTT source
        is down, the WAL reports a fault, the bus is paused; every reason is listed) or `failing` (a
        worker is dead or hung: the watchdog is about to have systemd restart the service)."""
        snap = self.snapshot
        now = time.monotonic()
        lines: dict[str, Any] = {}
        for ep_id, line in self.lines.items():
            ep = snap.endpoints[ep_id]
            entry: dict[str, Any] = {
                "scheme": ep.scheme,
                "address": ep.host if ep.port is None else f"{ep.host}:{ep.port}",
                "alive": line.is_alive(),
                "state": _line_state(line),
                "heartbeat_age_s": round(now - line.heartbeat, 2),
            }
            try:
                entry["drivers"] = line.status()
            except Exception as e:  # noqa: BLE001 - status is best effort; show why it is missing
                entry["drivers"] = {"error": str(e)}
            lines[ep_id] = entry
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "time_ms": now_ms(),  # the gateway's clock, for the ages of the *_ms fields
            "uptime_s": round(now - self.started_at, 1),
            "config": snap.directory,
            "revision": snap.revision,
            "lines": lines,
            "sources": self._sources_status(now),
            "bus": {
                "used": len(self.bus) if self.bus is not None else 0,
                "capacity": snap.gateway.bus.capacity,
                "paused": bool(self.bus.paused) if self.bus is not None else False,
                "next_seq": self.bus.next_seq if self.bus is not None else None,
            },
            "wal": self._wal_stats(),
            "uplink": self.uplink.stats() if self.uplink is not None else None,
            "tail_clients": self.tail.clients,
            "last_reload": self.reloader.last if self.reloader is not None else None,
        }
        if self.supervisor is not None:
            out["supervisor"] = {
                "ready": self.supervisor.ready,
                "healthy": self.supervisor.healthy,
                "problems": list(self.supervisor.problems),
            }
        sup = self.supervisor
        problems = list(sup.problems) if sup is not None else []
        # before its first check the supervisor has judged nothing yet: no problem is not a dead worker
        out["liveness"] = {"ok": not problems, "ready": sup.ready if sup is not None else False, "problems": problems}
        out["health"] = self._health(out)
        return out

    def _health(self, st: dict[str, Any]) -> dict[str, Any]:
        """The service verdict over the figures `status()` gathered (see there)."""
        reasons: list[str] = []
        for ep_id, line in st["lines"].items():
            drivers = line.get("drivers") or {}
            faulty = [d_id for d_id, d in drivers.items() if isinstance(d, dict) and d.get("state") == "fault"]
            if line["state"] != "up":  # one reason for the line, not one per device behind it
                errors = sorted({str(drivers[d]["last_error"]) for d in faulty if drivers[d].get("last_error")})
                why = (f": {errors[0]}" if errors else "") + (f" (in Fault: {', '.join(faulty)})" if faulty else "")
                reasons.append(f"line {ep_id} ({line['address']}) is {line['state']}{why}")
                continue
            for d_id in faulty:
                reasons.append(f"driver {d_id} on {ep_id} in Fault: {drivers[d_id].get('last_error') or 'no answer'}")
        for ep_id, src in st["sources"].items():
            if not src.get("alive", True) or not src.get("connected"):
                why = f": {src['last_error']}" if src.get("last_error") else ""
                reasons.append(f"MQTT source {ep_id} ({src.get('broker')}) is {src.get('state')}{why}")
                continue
            for d_id, d in (src.get("drivers") or {}).items():
                if d.get("health") != "ok":
                    reasons.append(f"MQTT driver {d_id} on {ep_id} is {d.get('health')}")
        up = st["uplink"]
        if up is not None and up.get("state") != "connected":
            why = f": {up['last_error']}" if up.get("last_error") else ""
            reasons.append(
                f"uplink {up.get('connector')} is not connected to {up.get('broker')} ({up.get('state')}){why}"
            )
        wal, writer = st["wal"], self.writer
        if wal.get("fault"):
            reasons.append(f"WAL commits fail ({wal['fault']}): frames wait in memory")
        if writer is not None and getattr(writer, "error", None) is not None:
            reasons.append(f"WAL writer failed: {writer.error}")
        if not st["liveness"]["ready"]:
            reasons.append("starting: not every worker has reported yet")
        bus = st["bus"]
        if bus["paused"]:
            reasons.append(f"bus paused at {bus['used']}/{bus['capacity']} frames: lines skip their polls")
        if not st["liveness"]["ok"]:
            state = "failing"
            reasons = [*(f"not alive: {p}" for p in st["liveness"]["problems"]), *reasons]
        else:
            state = "degraded" if reasons else "healthy"
        return {"state": state, "reasons": reasons}

    def _sources_status(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ep_id, src in self.sources.items():
            entry = src.status()
            entry["alive"] = src.is_alive()
            entry["heartbeat_age_s"] = round(now - src.heartbeat, 2)
            out[ep_id] = entry
        return out

    def _wal_stats(self) -> dict[str, Any]:
        wal = self.wal
        if wal is None:
            return {}
        stats = getattr(wal, "stats", None)
        if callable(stats):
            result = stats()
            return dict(result) if isinstance(result, dict) else {"stats": result}
        return {"dir": self.snapshot.gateway.wal.dir}

    # -- control commands ------------------------------------------------------------------------------------------
    def _register_commands(self) -> None:
        c = self.control
        c.register("status", lambda req: self.status())
        c.register("connector.stats", self._connector(lambda up: up.stats()))
        c.register("connector.reconnect", self._connector(self._reconnect))
        c.register("reload", self._reload)
        if os.environ.get("EDGE_GATEWAY_TEST_HOOKS") == "1":  # never set by the shipped units
            c.register("test.stall_wal", self._stall_wal)

    def _connector(self, fn: Any) -> Any:
        def handler(req: dict[str, Any]) -> Any:
            name = req.get("name", "mqtt")
            up = self.uplink
            if up is None:
                raise ControlError("no connector is configured")
            if name not in ("mqtt", "mqtt5", up.cfg.id):
                raise ControlError(f"unknown connector {name!r}; this gateway has {up.cfg.id!r} (mqtt)")
            return fn(up)

        return handler

    @staticmethod
    def _reconnect(up: Runner) -> dict[str, Any]:
        if not up.is_alive():
            raise ControlError(f"the uplink {up.cfg.id} is not running (state {up.state.value}): nothing to reconnect")
        up.reconnect()
        return {
            "requested": True,
            "connector": up.cfg.id,
            "broker": f"{up.cfg.scheme}://{up.cfg.host}:{up.cfg.port}",
            "state": up.state.value,
            "inflight": up.window.open,
        }

    def _reload(self, _req: dict[str, Any]) -> Any:
        """`edge-ctl reload`: answers when the reload is done (applied, unchanged, invalid or rolled back)."""
        if self.reloader is None:
            raise ControlError("this gateway was started without a config directory: nothing to reload")
        return self.reloader.request("edge-ctl reload").result(timeout=RELOAD_STALE_AFTER)

    def _stall_wal(self, req: dict[str, Any]) -> Any:
        """Test hook (EDGE_GATEWAY_TEST_HOOKS=1): a WAL writer that stops making progress, as a hung disk would."""
        seconds = float(req.get("seconds", 60))
        self.writer.stall(seconds)
        return {"stalled_s": seconds}

    def request_reload(self, reason: str) -> None:
        """SIGHUP: queue a reload and return at once (the answer is logged)."""
        if self.reloader is not None:
            self.reloader.request(reason)


def _line_state(line: Any) -> str:
    """`up` (the port or TCP connection is open), `connecting` (not opened yet), `down` (it failed and
    is retried with backoff) or `dead` (the thread ended)."""
    if not line.is_alive():
        return "dead"
    connected = getattr(line, "connected", None)  # the line's own figure, when it has one
    if connected is None:
        connected = getattr(line, "_connected", False)
    if connected:
        return "up"
    return "down" if getattr(line, "_reconnect_backoff", 0.0) else "connecting"
