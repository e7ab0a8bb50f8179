"""What the running gateway says about itself: the one-line `summary()` (systemd STATUS=, on the
supervisor thread) and `status()` (`edge-ctl status`, on control threads), with `health`, the
service's verdict. Both read one copy of the worker table and one reference to each worker, so a
reload or a restart on another thread can change neither under them."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from edge_gateway import __version__
from edge_gateway.core import registry
from edge_gateway.core.frame import now_ms

if TYPE_CHECKING:
    from edge_gateway.runtime.gateway import Gateway


def _by_plugin(gw: Gateway) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in registry.drivers()}
    for ep_id, entry in gw.table.snapshot().items():
        out.setdefault(entry.plugin, {})[ep_id] = entry.worker
    return out


def summary(gw: Gateway) -> str:
    snap, up, wal = gw.snapshot, gw.runner, gw.wal  # each read once
    parts = [p for name, ws in _by_plugin(gw).items() if (p := registry.driver(name).summary(ws))]
    if up is not None:
        parts.append(f"uplink {up.state.value}")
        parts.append(f"backlog {up.cursor.lag}")
    if wal is not None and wal.fault is not None:  # commits failing (a full disk): producers held
        parts.append(f"wal FAULT {wal.fault}")
    source = getattr(gw, "source", None)
    if source is not None:
        parts.append(source.summary())
    parts.append(f"rev {snap.revision[:8]}")
    return ", ".join(parts)


def status(gw: Gateway) -> dict[str, Any]:
    """`edge-ctl status` (and `--json`): every worker's figures plus `health`, the service's verdict.

    `liveness` is what the watchdog judges (every worker thread alive and making progress);
    `health` is whether the gateway does its job: `healthy`, `degraded` (running, but something it
    serves is not: the uplink is not connected, a line is down, a device is in Fault, an MQTT source
    is down, the WAL reports a fault, the bus is paused; every reason is listed) or `failing` (a
    worker is dead or hung: the watchdog is about to have systemd restart the service)."""
    snap, up, bus, sup, reloader = gw.snapshot, gw.runner, gw.bus, gw.supervisor, gw.reloader  # each read once
    now = time.monotonic()
    sections: dict[str, dict[str, Any]] = {"lines": {}, "sources": {}}
    owner: dict[str, str] = {}
    for ep_id, entry in gw.table.snapshot().items():
        plugin = registry.driver(entry.plugin)
        sections.setdefault(plugin.status_section, {})[ep_id] = plugin.status(ep_id, snap, entry.worker, now)
        owner[ep_id] = entry.plugin
    out: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "time_ms": now_ms(),  # the gateway's clock, for the ages of the *_ms fields
        "uptime_s": round(now - gw.started_at, 1),
        "config": snap.directory,
        "revision": snap.revision,
        **sections,
        "bus": {
            "used": len(bus) if bus is not None else 0,
            "capacity": snap.gateway.bus.capacity,
            "paused": bool(bus.paused) if bus is not None else False,
            "next_seq": bus.next_seq if bus is not None else None,
        },
        "wal": _wal_stats(gw),
        "uplink": up.stats() if up is not None else None,
        "tail_clients": gw.tail.clients,
        "last_reload": reloader.last if reloader is not None else None,
    }
    source = getattr(gw, "source", None)
    if source is not None:
        out["config_source"] = source.status()
    problems = list(sup.problems) if sup is not None else []
    if sup is not None:
        out["supervisor"] = {"ready": sup.ready, "healthy": sup.healthy, "problems": problems}
    # before its first check the supervisor has judged nothing yet: no problem is not a dead worker
    out["liveness"] = {"ok": not problems, "ready": sup.ready if sup is not None else False, "problems": problems}
    out["health"] = _health(gw, out, owner, list(sections))
    return out


def _health(gw: Gateway, st: dict[str, Any], owner: dict[str, str], sections: list[str]) -> dict[str, Any]:
    """The service verdict over the figures `status()` gathered (see there)."""
    reasons: list[str] = []
    for section in sections:  # lines first, then sources: the order `edge-ctl status` prints them
        for ep_id, entry in st[section].items():
            reasons += registry.driver(owner[ep_id]).health(ep_id, entry)
    up = st["uplink"]
    if up is not None and up.get("state") != "connected":
        why = f": {up['last_error']}" if up.get("last_error") else ""
        reasons.append(f"uplink {up.get('connector')} is not connected to {up.get('broker')} ({up.get('state')}){why}")
    wal, writer = st["wal"], gw.writer
    if wal.get("fault"):
        reasons.append(f"WAL commits fail ({wal['fault']}): frames wait in memory")
    if writer is not None and getattr(writer, "error", None) is not None:
        reasons.append(f"WAL writer failed: {writer.error}")
    source = getattr(gw, "source", None)
    if source is not None:
        reasons += source.health()
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


def _wal_stats(gw: Gateway) -> dict[str, Any]:
    wal = gw.wal
    if wal is None:
        return {}
    stats = getattr(wal, "stats", None)
    if callable(stats):
        result = stats()
        return dict(result) if isinstance(result, dict) else {"stats": result}
    return {"dir": gw.snapshot.gateway.wal.dir}
