"""What changed between two snapshots: the smallest set of things hot reload must touch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.config.model import Snapshot


@dataclass(frozen=True)
class Impact:
    endpoints_added: tuple[str, ...] = ()
    endpoints_removed: tuple[str, ...] = ()
    endpoints_changed: tuple[str, ...] = ()  # reopen the line: every driver on it restarts
    drivers_added: tuple[str, ...] = ()
    drivers_removed: tuple[str, ...] = ()
    drivers_changed: tuple[str, ...] = ()  # restart this driver only (on an unchanged endpoint)
    variables_changed: tuple[str, ...] = ()  # driver ids whose tag map changed: swap it, no restart
    connectors_changed: tuple[str, ...] = ()
    gateway_changed: tuple[str, ...] = field(default=())  # sections of gateway.yml: bus, wal, metrics, control
    # MQTT sources (drivers/mqtt_source), apart so the fields above only ever name Modbus lines and drivers.
    # One client serves every driver of an MQTT endpoint: any change to the endpoint or to one of its
    # drivers restarts that endpoint's source; a change of tags only swaps the driver's tag map.
    mqtt_sources_added: tuple[str, ...] = ()  # endpoint ids: start a source
    mqtt_sources_removed: tuple[str, ...] = ()  # endpoint ids: stop it
    mqtt_sources_changed: tuple[str, ...] = ()  # endpoint ids: restart it (new session, new subscriptions)
    mqtt_tags_changed: tuple[str, ...] = ()  # driver ids: MqttSource.update_tags, no restart
    # Plugins on the generic tables (core/driver.py BaseDriver): endpoint ids whose endpoint, devices or
    # tags changed (added and removed ones included); the plugin's plan_reload decides what that restarts.
    plugin_endpoints_changed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)

    def lines(self) -> list[str]:
        out = []
        for name in self.__dataclass_fields__:
            items = getattr(self, name)
            if items:
                out.append(f"{name.replace('_', ' ')}: {', '.join(items)}")
        return out or ["no change"]


def _keys(old: dict, new: dict) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(sorted(new.keys() - old.keys()))
    removed = tuple(sorted(old.keys() - new.keys()))
    changed = tuple(sorted(k for k in old.keys() & new.keys() if old[k] != new[k]))
    return added, removed, changed


def diff(old: Snapshot, new: Snapshot) -> Impact:
    """What a reload from `old` to `new` touches. When they were read from two directories, `new` is
    compared as if its files were installed in `old`'s directory (what a deployment does): a path it
    wrote relative (`wal.dir: wal`) is resolved against `old.directory`, so two copies of one config
    compare equal wherever they sit, and an absolute path compares as written."""
    if new.relative_paths and old.directory and new.directory != old.directory:
        new = installed_in(new, old.directory)
    ep_add, ep_rm, ep_chg = _keys(old.endpoints, new.endpoints)
    dr_add, dr_rm, dr_chg = _keys(old.drivers, new.drivers)
    reopened = set(ep_chg)
    # A driver that moved to another endpoint is removed from one line and added to another.
    moved = {d for d in dr_chg if old.drivers[d].endpoint_id != new.drivers[d].endpoint_id}
    dr_chg = tuple(d for d in dr_chg if d not in moved and new.drivers[d].endpoint_id not in reopened)
    tagmaps_changed = tuple(
        sorted(
            d
            for d in old.drivers.keys() & new.drivers.keys()
            if d not in dr_chg and d not in moved and old.variables_of(d) != new.variables_of(d)
        )
    )
    gw = tuple(s for s in ("bus", "wal") if getattr(old.gateway, s) != getattr(new.gateway, s))
    if (old.gateway.metrics_host, old.gateway.metrics_port) != (
        new.gateway.metrics_host,
        new.gateway.metrics_port,
    ):
        gw += ("metrics",)
    if old.gateway.control_socket != new.gateway.control_socket:
        gw += ("control",)
    co_add, co_rm, co_chg = _keys(old.connectors, new.connectors)
    m = _mqtt(old, new)
    m["plugin_endpoints_changed"] = _plugins(old, new)
    return Impact(
        endpoints_added=ep_add,
        endpoints_removed=ep_rm,
        endpoints_changed=ep_chg,
        drivers_added=tuple(sorted(set(dr_add) | moved)),
        drivers_removed=tuple(sorted(set(dr_rm) | moved)),
        drivers_changed=dr_chg,
        variables_changed=tagmaps_changed,
        connectors_changed=tuple(sorted(set(co_add) | set(co_rm) | set(co_chg))),
        gateway_changed=gw,
        **m,
    )


def _mqtt(old: Snapshot, new: Snapshot) -> dict[str, tuple[str, ...]]:
    ep_add, ep_rm, ep_chg = _keys(old.mqtt_endpoints, new.mqtt_endpoints)
    dr_add, dr_rm, dr_chg = _keys(old.mqtt_drivers, new.mqtt_drivers)
    restart = set(ep_chg)
    for d in (*dr_add, *dr_chg):
        restart.add(new.mqtt_drivers[d].endpoint_id)
    for d in (*dr_rm, *dr_chg):
        restart.add(old.mqtt_drivers[d].endpoint_id)
    restart -= set(ep_add) | set(ep_rm)  # started or stopped anyway
    tags = tuple(
        sorted(
            d
            for d in old.mqtt_drivers.keys() & new.mqtt_drivers.keys()
            if d not in dr_chg
            and new.mqtt_drivers[d].endpoint_id not in restart
            and old.mqtt_tags_of(d) != new.mqtt_tags_of(d)
        )
    )
    return {
        "mqtt_sources_added": ep_add,
        "mqtt_sources_removed": ep_rm,
        "mqtt_sources_changed": tuple(sorted(restart)),
        "mqtt_tags_changed": tags,
    }


def _plugins(old: Snapshot, new: Snapshot) -> tuple[str, ...]:
    def parts(s: Snapshot, e: str) -> tuple[Any, ...]:
        devices = tuple(sorted((d for d in s.plugin_devices.values() if d.endpoint_id == e), key=lambda d: d.id))
        ids = {d.id for d in devices}
        return (s.plugin_endpoints.get(e), devices, tuple(t for t in s.plugin_tags if t.driver_id in ids))

    eps = set(old.plugin_endpoints) | set(new.plugin_endpoints)
    return tuple(sorted(e for e in eps if parts(old, e) != parts(new, e)))


def installed_in(snapshot: Snapshot, directory: str) -> Snapshot:
    """`snapshot` with each path its files wrote relative resolved against `directory` instead, the
    way the loader resolves it (`(directory / written).resolve()`)."""
    base = Path(directory)
    moved = {resolved: str((base / written).resolve()) for resolved, written in snapshot.relative_paths.items()}
    out = _rebased(snapshot, moved)
    assert isinstance(out, Snapshot)
    return dataclasses.replace(
        out, directory=directory, relative_paths={moved[k]: v for k, v in out.relative_paths.items()}
    )


def _rebased(obj: Any, moved: dict[str, str]) -> Any:
    """A copy of `obj` (dataclasses, dicts, tuples) with every string that is a key of `moved`
    replaced. Only paths the loader resolved are keys: absolute paths no other setting holds."""
    if isinstance(obj, str):
        return moved.get(obj, obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if f.init and f.name != "relative_paths":
                value = getattr(obj, f.name)
                new = _rebased(value, moved)
                if new is not value:
                    changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, dict):
        items = {k: _rebased(v, moved) for k, v in obj.items()}
        return items if any(items[k] is not v for k, v in obj.items()) else obj
    if type(obj) is tuple:
        seq = tuple(_rebased(v, moved) for v in obj)
        return seq if any(a is not b for a, b in zip(seq, obj, strict=True)) else obj
    return obj
