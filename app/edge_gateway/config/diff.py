"""What changed between two snapshots, entry by entry, for every driver plugin alike: endpoints, devices
(drivers.yml entries) and their tags, the connector and gateway.yml. What a change restarts is not
decided here: each plugin's `plan_reload` reads the impact on its own entries (`diff(old, new, plugin)`)
and plans its steps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_gateway.config.model import Snapshot


class Owner(Protocol):
    """What `diff` needs of a driver plugin to tell its entries: endpoints by scheme, devices by proto."""

    @property
    def name(self) -> str: ...

    @property
    def schemes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Impact:
    endpoints_added: tuple[str, ...] = ()
    endpoints_removed: tuple[str, ...] = ()
    endpoints_changed: tuple[str, ...] = ()  # the endpoint entry itself; its devices are not listed again
    drivers_added: tuple[str, ...] = ()  # device ids; one that moved to another endpoint is removed and added
    drivers_removed: tuple[str, ...] = ()
    drivers_changed: tuple[str, ...] = ()  # the device entry changed, on an unchanged endpoint
    variables_changed: tuple[str, ...] = ()  # device ids whose tags changed, the device itself unchanged
    connectors_changed: tuple[str, ...] = ()
    gateway_changed: tuple[str, ...] = field(default=())  # sections of gateway.yml: bus, wal, metrics, control

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


def diff(old: Snapshot, new: Snapshot, plugin: Owner | None = None) -> Impact:
    """What a reload from `old` to `new` touches; with `plugin`, of the entries only that plugin's
    (endpoints of its schemes, devices of its proto, their tags). When they were read from two
    directories, `new` is compared as if its files were installed in `old`'s directory (what a
    deployment does): a path it wrote relative (`wal.dir: wal`) is resolved against `old.directory`,
    so two copies of one config compare equal wherever they sit, and an absolute path compares as written."""
    if new.relative_paths and old.directory and new.directory != old.directory:
        new = installed_in(new, old.directory)
    old_ep, old_dev, old_tags = _tables(old, plugin)
    new_ep, new_dev, new_tags = _tables(new, plugin)
    ep_add, ep_rm, ep_chg = _keys(old_ep, new_ep)
    dr_add, dr_rm, dr_chg = _keys(old_dev, new_dev)
    reopened = set(ep_chg)
    # A device that moved to another endpoint is removed from one and added to the other.
    moved = {d for d in dr_chg if old_dev[d].endpoint_id != new_dev[d].endpoint_id}
    dr_chg = tuple(d for d in dr_chg if d not in moved and new_dev[d].endpoint_id not in reopened)
    tags_changed = tuple(
        sorted(
            d
            for d in old_dev.keys() & new_dev.keys()
            if d not in dr_chg and d not in moved and old_tags.get(d, ()) != new_tags.get(d, ())
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
    return Impact(
        endpoints_added=ep_add,
        endpoints_removed=ep_rm,
        endpoints_changed=ep_chg,
        drivers_added=tuple(sorted(set(dr_add) | moved)),
        drivers_removed=tuple(sorted(set(dr_rm) | moved)),
        drivers_changed=dr_chg,
        variables_changed=tags_changed,
        connectors_changed=tuple(sorted(set(co_add) | set(co_rm) | set(co_chg))),
        gateway_changed=gw,
    )


def _tables(s: Snapshot, plugin: Owner | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple]]:
    """(endpoints, devices, device id → its tags in file order), of one plugin when it is given."""
    endpoints, devices = s.plugin_endpoints, s.plugin_devices
    if plugin is not None:
        endpoints = {k: e for k, e in endpoints.items() if e.scheme in plugin.schemes}
        devices = {k: d for k, d in devices.items() if d.proto == plugin.name}
    tags: dict[str, list[Any]] = {}
    for t in s.plugin_tags:
        if t.driver_id in devices:
            tags.setdefault(t.driver_id, []).append(t)
    return endpoints, devices, {d: tuple(ts) for d, ts in tags.items()}


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
