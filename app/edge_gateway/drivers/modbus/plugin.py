"""The Modbus driver plugin (entry point `modbus` in `edge_gateway.drivers`): RTU on RS-485, Modbus/TCP,
TLS and RTU over TCP, one ModbusLine thread per endpoint, every device (unit) of that endpoint on it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Future
from importlib import resources
from typing import Any

from edge_gateway.config.diff import diff
from edge_gateway.config.model import Snapshot
from edge_gateway.core.driver import ReloadStep, RuntimeContext, SchemaFragments, WriteTarget
from edge_gateway.core.frame import Value
from edge_gateway.drivers.modbus import writes
from edge_gateway.drivers.modbus.line import ModbusLine
from edge_gateway.drivers.modbus.model import SCHEMES


class ModbusPlugin:
    name = "modbus"
    schemes = SCHEMES
    status_section = "lines"
    # Its parts of the file schemas (schema.json beside this file), merged by config/schema.py.
    file_schema = json.loads(resources.files(__package__).joinpath("schema.json").read_text())
    generic = False  # its own builders (config.py) fill the generic tables with its own model

    def schema(self) -> SchemaFragments:
        from edge_gateway.config import schema

        return SchemaFragments(
            endpoint_opts=schema.schema("endpoints")["$defs"]["modbus_opts"],
            cfg=schema.schema("drivers")["$defs"]["modbus"],
            address=schema.schema("variables")["$defs"]["variable"]["properties"]["address"],
        )

    @property
    def config(self) -> Any:
        """Its builders and lint rules (config.py), which the loader reaches through the registry."""
        from edge_gateway.drivers.modbus import config

        return config

    @property
    def cli(self) -> Any:
        """`edge-cfg modbus scan` (scan.py): `add_subparser(sub)` and `run(args)`, added by config/cli.py."""
        from edge_gateway.drivers.modbus import scan

        return scan

    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> Any:
        raise NotImplementedError("built by drivers/modbus/config.py, through .config")

    build_cfg = build_address = build_endpoint

    # -- workers ----------------------------------------------------------------------------------------
    def endpoints(self, snap: Snapshot) -> list[str]:
        return [e for e, ep in snap.plugin_endpoints.items() if ep.scheme in self.schemes and snap.devices_on(e)]

    def start(self, endpoint_id: str, snap: Snapshot, ctx: RuntimeContext) -> ModbusLine | None:
        devices = snap.devices_on(endpoint_id)
        if not devices:
            return None
        ids = {d.id for d in devices}
        line = ModbusLine(
            snap.plugin_endpoints[endpoint_id],
            devices,
            tuple(v for v in snap.plugin_tags if v.driver_id in ids),
            ctx.bus,
        )
        line.start()
        return line

    def plan_reload(self, old: Snapshot, new: Snapshot) -> list[ReloadStep]:
        """Endpoint changes reopen the line; device and tag changes on an open line are done in place."""
        impact = diff(old, new, self)
        steps: dict[str, ReloadStep] = {}
        for e in impact.endpoints_removed:
            steps[e] = ReloadStep(self.name, e, "stop")
        for e in (*impact.endpoints_changed, *impact.endpoints_added):
            steps[e] = ReloadStep(self.name, e, "restart" if e in old.plugin_endpoints else "start")
        touched: dict[str, set[str]] = {}
        for d in impact.drivers_removed:
            touched.setdefault(old.plugin_devices[d].endpoint_id, set()).add(d)
        for d in (*impact.drivers_added, *impact.drivers_changed, *impact.variables_changed):
            touched.setdefault(new.plugin_devices[d].endpoint_id, set()).add(d)
        for e, devices in touched.items():
            if e in steps:
                continue  # reopened with all its devices anyway
            if not old.devices_on(e):
                steps[e] = ReloadStep(self.name, e, "start")  # no line until now: open it with all of them
            else:
                steps[e] = ReloadStep(self.name, e, "update", tuple(sorted(devices)))
        order = {"stop": 0, "restart": 1, "start": 1, "update": 2}
        return sorted(steps.values(), key=lambda s: (order[s.action], s.endpoint_id))

    def apply_step(
        self, step: ReloadStep, line: ModbusLine | None, snap: Snapshot, ctx: RuntimeContext
    ) -> ModbusLine | None:
        """Make the endpoint's line match `snap` (the new snapshot, or the old one in a rollback)."""
        ep_id = step.endpoint_id
        in_place = step.action == "update" and line is not None and line.endpoint == snap.plugin_endpoints.get(ep_id)
        if not in_place:
            if line is not None:
                line.stop()
            return None if step.action == "stop" else self.start(ep_id, snap, ctx)
        assert line is not None
        for d in step.devices:
            dev = snap.plugin_devices.get(d)
            if dev is None or dev.endpoint_id != ep_id:
                line.remove_driver(d)
            elif line.device(d) == dev:
                line.update_variables(d, snap.tags_of(d))  # same device: swap its tag map
            else:
                line.restart_driver(dev, snap.tags_of(d))
        if not snap.devices_on(ep_id):
            line.stop()  # its last device went away
            return None
        return line

    def stale_after(self, endpoint_id: str, snap: Snapshot, line: Any) -> float:
        """A poll cycle may take one polling period plus, when units are dead, a full timeout ×
        (retry+1) for each of its requests; beyond that (+ margin) the line is hung."""
        ep = snap.plugin_endpoints[endpoint_id]
        devices = snap.devices_on(endpoint_id)
        try:
            requests = max(1, len(line.plan())) if line is not None else len(devices)
        except Exception:  # noqa: BLE001 - plan() is informative only
            requests = len(devices)
        polling = max(d.modbus.polling for d in devices)
        retry = max(d.modbus.retry for d in devices)
        return polling + ep.timeout * (retry + 1) * requests + 10.0

    # -- writes -----------------------------------------------------------------------------------------
    def resolve_write(self, snap: Snapshot, tag: str, value: Value) -> WriteTarget | None:
        var = snap.tag(tag)
        driver = snap.plugin_devices.get(var.driver_id) if var is not None else None
        if var is None or driver is None or driver.proto != self.name:
            return None
        writes.check_command(var, driver, value)
        return WriteTarget(self.name, driver.endpoint_id if driver else "", tag, var)

    def submit_write(self, line: ModbusLine, target: WriteTarget, value: Value) -> Future[None]:
        return line.submit_write(target.item, value)

    # -- status -----------------------------------------------------------------------------------------
    def status(self, endpoint_id: str, snap: Snapshot, line: Any, now: float) -> dict[str, Any]:
        ep = snap.plugin_endpoints[endpoint_id]
        entry: dict[str, Any] = {
            "scheme": ep.scheme,
            "address": ep.host if ep.port is None else f"{ep.host}:{ep.port}",
            "alive": line.is_alive(),
            "state": line_state(line),
            "heartbeat_age_s": round(now - line.heartbeat, 2),
        }
        try:
            entry["drivers"] = line.status()
        except Exception as e:  # noqa: BLE001 - status is best effort; show why it is missing
            entry["drivers"] = {"error": str(e)}
        return entry

    def health(self, endpoint_id: str, line: Mapping[str, Any]) -> list[str]:
        reasons: list[str] = []
        drivers = line.get("drivers") or {}
        faulty = [d_id for d_id, d in drivers.items() if isinstance(d, dict) and d.get("state") == "fault"]
        if line["state"] != "up":  # one reason for the line, not one per device behind it
            errors = sorted({str(drivers[d]["last_error"]) for d in faulty if drivers[d].get("last_error")})
            why = (f": {errors[0]}" if errors else "") + (f" (in Fault: {', '.join(faulty)})" if faulty else "")
            return [f"line {endpoint_id} ({line['address']}) is {line['state']}{why}"]
        for d_id in faulty:
            reasons.append(f"driver {d_id} on {endpoint_id} in Fault: {drivers[d_id].get('last_error') or 'no answer'}")
        return reasons

    def summary(self, lines: Mapping[str, Any]) -> str:
        up = sum(1 for line in lines.values() if line.is_alive())
        return f"lines {up}/{len(lines)}"


def line_state(line: Any) -> str:
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


PLUGIN = ModbusPlugin()

__all__ = ["PLUGIN", "ModbusPlugin"]
