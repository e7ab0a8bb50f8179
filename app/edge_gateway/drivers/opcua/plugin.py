"""The OPC UA driver plugin (entry point `opcua` in `edge_gateway.drivers`, `kind: static`): servers
reached at `opc.tcp://host:port`, one worker thread (and asyncio loop, and session) per endpoint,
polling with the Read service and/or subscriptions; writes with the node's own variant type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from edge_gateway.core.driver import (
    BaseDriver,
    DeviceItem,
    EndpointItem,
    Refused,
    RuntimeContext,
    TagItem,
    Worker,
    WriteTarget,
)
from edge_gateway.core.frame import Value
from edge_gateway.drivers.opcua import config


class OpcuaPlugin(BaseDriver):
    name = "opcua"
    schemes = ("opc.tcp",)
    # fragments: schema.json beside this file (BaseDriver reads it)
    # The worker stamps its heartbeat at least every second, except inside one request (at most the
    # endpoint's `timeout`, 300 s by the schema) or a connect: beyond the longest of them it is hung.
    stale_s = 30.0

    @property
    def cli(self) -> Any:
        """`edge-cfg opcua browse` (browse.py): `add_subparser(sub)` and `run(args)`."""
        from edge_gateway.drivers.opcua import browse

        return browse

    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> Any:
        return config.build_endpoint(opts)

    def build_cfg(self, ident: str, cfg: Mapping[str, Any]) -> Any:
        return config.build_cfg(cfg)

    def build_address(self, tag: str, datatype: str, address: Mapping[str, Any]) -> Any:
        return config.build_address(datatype, address)

    def stale_after(self, endpoint_id: str, snap: Any, worker: Worker) -> float:
        ep = snap.plugin_endpoints[endpoint_id]
        return max(self.stale_s, 3 * ep.opts.timeout + 5)

    def worker(
        self, endpoint: EndpointItem, devices: Sequence[DeviceItem], tags: Sequence[TagItem], ctx: RuntimeContext
    ) -> Worker:
        from edge_gateway.drivers.opcua.worker import OpcuaWorker  # asyncua is imported only when one runs

        w = OpcuaWorker(endpoint, devices, tags, ctx.bus)
        w.start()
        return w

    def resolve_write(self, snap: Any, tag: str, value: Value) -> WriteTarget | None:
        target = super().resolve_write(snap, tag, value)
        if target is None:
            return None
        item: TagItem = target.item
        if not snap.plugin_devices[item.driver_id].cfg.enable_write:
            raise Refused("write_disabled", f"{tag}: device {item.driver_id} has enable_write: false")
        from edge_gateway.drivers.opcua.worker import check_value

        check_value(item.datatype, value)
        return target

    def write(self, worker: Worker, tag: TagItem, value: Value) -> Future[None]:
        return worker.write(tag, value)  # type: ignore[attr-defined, no-any-return]


PLUGIN = OpcuaPlugin()
