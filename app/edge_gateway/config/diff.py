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
    # MQTT sources (drivers/mqtt_source), apart so the fields above only ever name Modbus lines and drivers.
    # One client serves every driver of an MQTT endpoint: any change to the endpoint or to one of its
    # drivers restarts that endpoint's source; a change of tags only swaps the driver's tag map.
    mqtt_sources_added: tuple[str, ...] = ()  # endpoint ids: start a source
    mqtt_sources_removed: tuple[str, ...] = ()  # endpoint ids: stop it
    mqtt_sources_changed: tuple[str, ...] = ()  # endpoint ids: restart it (new session, new subscriptions)
    mqtt_tags_changed: tuple[str, ...] = ()  # driver ids: MqttSource.update_tags, no restart

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
    m = _mqtt(old, new)
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
