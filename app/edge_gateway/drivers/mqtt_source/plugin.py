"""The MQTT-source driver plugin (entry point `mqtt` in `edge_gateway.drivers`): local brokers
(schemes mqtt, mqtts) whose messages become tags; one client thread and session per endpoint,
shared by its devices. Read-only: a cloud command on one of its tags is refused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Future
from importlib import resources
from typing import Any

from edge_gateway.config.diff import diff
from edge_gateway.config.model import Snapshot
from edge_gateway.core.driver import Refused, ReloadStep, RuntimeContext, SchemaFragments, WriteTarget
from edge_gateway.core.frame import Value
from edge_gateway.drivers.mqtt_source.mapping import may_produce
from edge_gateway.drivers.mqtt_source.source import MqttSource, start_source

# An MQTT source stamps its heartbeat at least every 0.1 s, except inside a connect attempt (at most
# paho's 5 s connect timeout, plus a TLS handshake): beyond this it is hung.
STALE_AFTER = 15.0


class MqttSourcePlugin:
    name = "mqtt"
    schemes = ("mqtt", "mqtts")
    status_section = "sources"
    # Its parts of the file schemas (schema.json beside this file), merged by config/schema.py.
    file_schema = json.loads(resources.files(__package__).joinpath("schema.json").read_text())
    generic = False  # its own builders (config.py) fill the generic tables with its own model

    def schema(self) -> SchemaFragments:
        from edge_gateway.config import schema

        v = schema.schema("variables")["$defs"]["variable"]["properties"]
        return SchemaFragments(
            endpoint_opts=schema.schema("endpoints")["$defs"]["mqtt_opts"],
            cfg=schema.schema("drivers")["$defs"]["mqtt"],
            address={"topic": v["topic"], "payload": v["payload"]},
        )

    @property
    def config(self) -> Any:
        """Its builders and lint rules (drivers/mqtt_source/config.py), which the loader reaches through
        the registry."""
        from edge_gateway.drivers.mqtt_source import config

        return config

    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> Any:
        raise NotImplementedError("built by drivers/mqtt_source/config.py, through .config")

    build_cfg = build_address = build_endpoint

    # -- workers ----------------------------------------------------------------------------------------
    def endpoints(self, snap: Snapshot) -> list[str]:
        return [e for e, ep in snap.plugin_endpoints.items() if ep.scheme in self.schemes and snap.devices_on(e)]

    def start(self, endpoint_id: str, snap: Snapshot, ctx: RuntimeContext) -> MqttSource | None:
        devices = snap.devices_on(endpoint_id)
        if not devices:
            return None
        ids = {d.id for d in devices}
        tags = tuple(t for t in snap.plugin_tags if t.driver_id in ids)
        return start_source(snap.plugin_endpoints[endpoint_id], devices, tags, ctx.bus, state_dir=ctx.state_dir)

    def plan_reload(self, old: Snapshot, new: Snapshot) -> list[ReloadStep]:
        """Any change to an endpoint or one of its devices restarts that endpoint's source (one client
        serves them all); a change of tags only swaps the device's tag map."""
        impact = diff(old, new, self)
        started_or_stopped = {*impact.endpoints_added, *impact.endpoints_removed}
        restart = set(impact.endpoints_changed)
        for d in (*impact.drivers_added, *impact.drivers_changed):
            restart.add(new.plugin_devices[d].endpoint_id)
        for d in (*impact.drivers_removed, *impact.drivers_changed):
            restart.add(old.plugin_devices[d].endpoint_id)
        restart -= started_or_stopped
        steps = [ReloadStep(self.name, e, "stop") for e in impact.endpoints_removed]
        steps += [ReloadStep(self.name, e, "restart") for e in sorted(restart)]
        steps += [ReloadStep(self.name, e, "start") for e in impact.endpoints_added]
        by_ep: dict[str, list[str]] = {}
        for d in impact.variables_changed:
            if new.plugin_devices[d].endpoint_id not in restart:
                by_ep.setdefault(new.plugin_devices[d].endpoint_id, []).append(d)
        steps += [ReloadStep(self.name, e, "update", tuple(sorted(ds))) for e, ds in sorted(by_ep.items())]
        return steps

    def apply_step(
        self, step: ReloadStep, src: MqttSource | None, snap: Snapshot, ctx: RuntimeContext
    ) -> MqttSource | None:
        ep_id = step.endpoint_id
        if step.action == "update" and src is not None and src.endpoint == snap.plugin_endpoints.get(ep_id):
            for d in step.devices:
                src.update_tags(d, snap.tags_of(d))
            return src
        if src is not None:
            src.stop()
        if step.action == "stop" or ep_id not in snap.plugin_endpoints:
            return None
        return self.start(ep_id, snap, ctx)

    def stale_after(self, endpoint_id: str, snap: Snapshot, src: Any) -> float:
        return STALE_AFTER

    # -- writes -----------------------------------------------------------------------------------------
    def resolve_write(self, snap: Snapshot, tag: str, value: Value) -> WriteTarget | None:
        mine = {d for d, dev in snap.plugin_devices.items() if dev.proto == self.name}
        if any(may_produce(t.tag, tag) for t in snap.plugin_tags if t.driver_id in mine):
            raise Refused("read_only", f"{tag} comes from an MQTT source: not writable")
        return None

    def submit_write(self, src: MqttSource, target: WriteTarget, value: Value) -> Future[None]:
        return src.submit_write(target.item, value)

    # -- status -----------------------------------------------------------------------------------------
    def status(self, endpoint_id: str, snap: Snapshot, src: Any, now: float) -> dict[str, Any]:
        entry: dict[str, Any] = src.status()
        entry["alive"] = src.is_alive()
        entry["heartbeat_age_s"] = round(now - src.heartbeat, 2)
        return entry

    def health(self, endpoint_id: str, src: Mapping[str, Any]) -> list[str]:
        if not src.get("alive", True) or not src.get("connected"):
            why = f": {src['last_error']}" if src.get("last_error") else ""
            return [f"MQTT source {endpoint_id} ({src.get('broker')}) is {src.get('state')}{why}"]
        return [
            f"MQTT driver {d_id} on {endpoint_id} is {d.get('health')}"
            for d_id, d in (src.get("drivers") or {}).items()
            if d.get("health") != "ok"
        ]

    def summary(self, sources: Mapping[str, Any]) -> str:
        """`mqtt 1/1` and, when not all is well, which devices: `mqtt 1/1 (lab_sensors degraded)`."""
        if not sources:
            return ""
        up = sum(1 for s in sources.values() if s.is_alive() and s.connected)
        unwell = [f"{d} {s.health(d)}" for s in sources.values() for d in s.driver_ids if s.health(d) != "ok"]
        return f"mqtt {up}/{len(sources)}" + (f" ({', '.join(unwell)})" if unwell else "")


PLUGIN = MqttSourcePlugin()
