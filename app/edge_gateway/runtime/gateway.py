"""The Gateway: one object that owns every worker of a running edge-gateway process.

    lines (one thread per endpoint) ─► FrameBus ─► WalWriter ─► WAL ─► Uplink (MQTT 5) ─► broker
    MQTT sources (one per local broker) ─┘
                                                        └─► TailHub (edge-ctl tail)
    Uplink ◄─ cloud command ─► Downlink ─► the owning line's submit_write ─► ack

`start()` brings them up in data-flow order (WAL first, so nothing a line produces can be lost;
the uplink last but one, then the control socket and /metrics); `stop()` takes them down in the
order that keeps every frame: lines stop polling, the bus is drained into the WAL and fsynced,
the uplink finishes its in-flight batches and says `offline`, the WAL writer closes (cursor acks
persisted). The supervisor (runtime/supervisor.py) watches `watched()` and talks to systemd.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

from prometheus_client import start_http_server

from edge_gateway import __version__
from edge_gateway.acquisition import start_line
from edge_gateway.acquisition.mqtt import MqttSource, start_source
from edge_gateway.bus import open_bus_and_wal
from edge_gateway.bus.frame import Value
from edge_gateway.config.model import Endpoint, Snapshot, Variable
from edge_gateway.metrics import REGISTRY
from edge_gateway.runtime.control import ControlError, ControlServer, TailHub
from edge_gateway.runtime.supervisor import Notifier, Supervisor, Watched
from edge_gateway.uplink.commands import Downlink
from edge_gateway.uplink.mqtt import Uplink

log = logging.getLogger(__name__)

# An MQTT source stamps its heartbeat at least every 0.1 s, except inside a connect attempt (at most
# paho's 5 s connect timeout, plus a TLS handshake): beyond this it is hung.
MQTT_SOURCE_STALE_AFTER = 15.0


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
        self.uplink: Uplink | None = None
        self.downlink: Downlink | None = None
        self.tail = TailHub()
        self.control = ControlServer(snapshot.gateway.control_socket, self.tail)
        self.supervisor: Supervisor | None = None
        self._metrics_server: Any = None
        self._watched: list[Watched] = []
        self._lock = threading.RLock()
        self.started_at = 0.0
        self.stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        snap = self.snapshot
        self.started_at = time.monotonic()
        self.control.bind()  # first: a second gateway on the same config fails here, before the WAL
        try:
            self.bus, self.wal, self.writer = open_bus_and_wal(snap.gateway)
            if not self.writer.is_alive():
                self.writer.start()
            self.writer.add_listener(self.tail.publish)
            for ep_id in snap.endpoints:
                self._start_line(ep_id)
            for ep_id in snap.mqtt_endpoints:
                self._start_source(ep_id)
            for conn in snap.connectors.values():  # the loader allows exactly one
                self.downlink = Downlink(conn.id, lambda: self.snapshot, self.submit_write, self.bus.publish)
                self.uplink = Uplink(conn, self.wal.cursor(conn.id), record=self.bus.publish, downlink=self.downlink)
                self.writer.add_listener(self.uplink.wake)
                self.uplink.start()
            self._register_commands()
            self.control.start()
            if self.serve_metrics:
                g = snap.gateway
                self._metrics_server, _ = start_http_server(g.metrics_port, addr=g.metrics_host, registry=REGISTRY)
            self._watched = self._build_watched()
            self.supervisor = Supervisor(lambda: self._watched, self.summary, self.notifier)
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
        if self.uplink is not None:
            self.uplink.stop()
        if self.writer is not None:
            self.writer.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("gateway stopped in %.2fs", time.monotonic() - t0)

    # -- lines -----------------------------------------------------------------------------------------------
    def _start_line(self, ep_id: str) -> None:
        snap = self.snapshot
        drivers = snap.drivers_on(ep_id)
        if not drivers:
            log.warning("endpoint %s has no drivers: not opened", ep_id)
            return
        ids = {d.id for d in drivers}
        variables = tuple(v for v in snap.variables if v.driver_id in ids)
        self.lines[ep_id] = start_line(snap.endpoints[ep_id], drivers, variables, self.bus)

    def _restart_line(self, ep_id: str) -> None:
        with self._lock:
            if self.stopped.is_set():
                return
            old = self.lines.get(ep_id)
            if old is not None:
                old.stop()
            self._start_line(ep_id)

    # -- MQTT sources -----------------------------------------------------------------------------------------
    def _start_source(self, ep_id: str) -> None:
        snap = self.snapshot
        drivers = snap.mqtt_drivers_on(ep_id)
        if not drivers:
            log.warning("MQTT endpoint %s has no drivers: not connected", ep_id)
            return
        ids = {d.id for d in drivers}
        tags = tuple(t for t in snap.mqtt_tags if t.driver_id in ids)
        self.sources[ep_id] = start_source(snap.mqtt_endpoints[ep_id], drivers, tags, self.bus)

    def _restart_source(self, ep_id: str) -> None:
        with self._lock:
            if self.stopped.is_set():
                return
            old = self.sources.get(ep_id)
            if old is not None:
                old.stop()
            self._start_source(ep_id)

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
                    target=lambda ep_id=ep_id: self.lines[ep_id],  # type: ignore[misc]
                    stale_after=self._line_stale_after(ep_id),
                    restart=lambda ep_id=ep_id: self._restart_line(ep_id),  # type: ignore[misc]
                )
            )
        for ep_id in self.sources:
            w.append(
                Watched(
                    f"mqtt:{ep_id}",
                    target=lambda ep_id=ep_id: self.sources[ep_id],  # type: ignore[misc]
                    stale_after=MQTT_SOURCE_STALE_AFTER,
                    restart=lambda ep_id=ep_id: self._restart_source(ep_id),  # type: ignore[misc]
                )
            )
        flush_s = self.snapshot.gateway.wal.flush_ms / 1000
        w.append(Watched("wal", target=lambda: self.writer, stale_after=max(10.0, 50 * flush_s)))
        if self.uplink is not None:
            up = self.uplink
            w.append(Watched("uplink", target=lambda: up, stale_after=up.stale_after))
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
        return self._watched

    def workers(self) -> list[Any]:
        """Every worker thread (they all have `heartbeat`)."""
        out: list[Any] = [*self.lines.values(), *self.sources.values()]
        if self.writer is not None:
            out.append(self.writer)
        if self.uplink is not None:
            out.append(self.uplink)
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
        parts.append(f"rev {self.snapshot.revision[:8]}")
        return ", ".join(parts)

    def _sources_summary(self) -> str:
        """`mqtt 1/1` and, when not all is well, which drivers: `mqtt 1/1 (lab_sensors degraded)`."""
        up = sum(1 for s in self.sources.values() if s.is_alive() and s.connected)
        unwell = [f"{d} {s.health(d)}" for s in self.sources.values() for d in s.driver_ids if s.health(d) != "ok"]
        return f"mqtt {up}/{len(self.sources)}" + (f" ({', '.join(unwell)})" if unwell else "")

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        now = time.monotonic()
        lines: dict[str, Any] = {}
        for ep_id, line in self.lines.items():
            ep = snap.endpoints[ep_id]
            entry: dict[str, Any] = {
                "scheme": ep.scheme,
                "address": ep.host if ep.port is None else f"{ep.host}:{ep.port}",
                "alive": line.is_alive(),
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
        }
        if self.supervisor is not None:
            out["supervisor"] = {
                "ready": self.supervisor.ready,
                "healthy": self.supervisor.healthy,
                "problems": list(self.supervisor.problems),
            }
        return out

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
        c.register("reload", self._reload_unavailable)

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
    def _reconnect(up: Uplink) -> dict[str, Any]:
        up.reconnect()
        return {"requested": True, "state": up.state.value}

    @staticmethod
    def _reload_unavailable(_req: dict[str, Any]) -> Any:
        raise ControlError("reload is not available in this build yet (restart the service to apply a new config)")
