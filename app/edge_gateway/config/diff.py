"""What changed between two snapshots: the smallest set of things hot reload must touch."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    )
