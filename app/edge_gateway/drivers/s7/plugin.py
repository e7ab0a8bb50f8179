"""The S7 driver plugin: `scheme: s7` endpoints, `proto: s7` devices, `address: {area, db, start, size, bit}`
tags, one `S7Line` worker thread per endpoint (drivers/s7/line.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from edge_gateway.config.units import parse_duration
from edge_gateway.core.datatypes import INT_RANGES
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
from edge_gateway.drivers.s7 import codec


@dataclass(frozen=True)
class S7Endpoint:
    rack: int
    slot: int
    tsap: int | None  # the remote TSAP, when given instead of rack/slot
    timeout: float


@dataclass(frozen=True)
class S7Device:
    polling: float
    enable_write: bool
    max_pdu: int


def _tsap(v: int | str) -> int:
    if isinstance(v, int):
        return v
    if v.startswith("0x"):
        return int(v, 16)
    hi, lo = v.split(".")
    return int(hi, 16) << 8 | int(lo, 16)


def _duration(v: Any, what: str, default: str) -> float:
    s = parse_duration(default if v is None else v)
    if s <= 0:
        raise ValueError(f"{what} must be positive")
    return s


def raw_value(tag: TagItem, value: Value) -> Value:
    """A command's value in PLC units: through the inverse of the tag's `scale` (affine scales only;
    ValueError otherwise), rounded for integer datatypes."""
    if tag.scale is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    raw: float = tag.scale.inverse(float(value))
    return round(raw) if tag.datatype in INT_RANGES else raw


class S7Plugin(BaseDriver):
    name = "s7"
    schemes = ("s7",)
    # fragments: schema.json beside this file (BaseDriver reads it)
    stale_s = 30.0

    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> S7Endpoint:
        if "tsap" in opts and ("rack" in opts or "slot" in opts):
            raise ValueError("give either rack/slot or tsap, not both")
        tsap = _tsap(opts["tsap"]) if "tsap" in opts else None
        return S7Endpoint(
            opts.get("rack", 0), opts.get("slot", 1), tsap, _duration(opts.get("timeout"), "timeout", "2s")
        )

    def build_cfg(self, ident: str, cfg: Mapping[str, Any]) -> S7Device:
        return S7Device(
            _duration(cfg.get("polling"), "polling", "1s"),
            bool(cfg.get("enable_write", False)),
            cfg.get("max_pdu", 960),
        )

    def build_address(self, tag: str, datatype: str, address: Mapping[str, Any]) -> codec.S7Address:
        return codec.build(datatype, dict(address))

    def stale_after(self, endpoint_id: str, snap: Any, worker: Worker) -> float:
        ep, devices, _ = self._parts(endpoint_id, snap)
        slowest = max((d.cfg.polling for d in devices), default=1.0)
        return max(self.stale_s, 3 * (slowest + 2 * ep.opts.timeout))

    def worker(
        self, endpoint: EndpointItem, devices: Sequence[DeviceItem], tags: Sequence[TagItem], ctx: RuntimeContext
    ) -> Worker:
        from edge_gateway.drivers.s7.line import S7Line

        w = S7Line(endpoint, list(devices), list(tags), ctx.bus)
        w.start()
        return w

    def resolve_write(self, snap: Any, tag: str, value: Value) -> WriteTarget | None:
        target = super().resolve_write(snap, tag, value)
        if target is None:
            return None
        item: TagItem = target.item
        device = snap.plugin_devices[item.driver_id]
        if not device.cfg.enable_write:
            raise Refused("write_disabled", f"{tag}: device {device.id} has enable_write off")
        try:
            codec.encode(item.datatype, item.address, raw_value(item, value))
        except ValueError as e:
            raise Refused("invalid_value", f"{tag}: {e}") from None
        return target

    def write(self, worker: Worker, tag: TagItem, value: Value) -> Future[None]:
        return worker.submit(tag, raw_value(tag, value))  # type: ignore[attr-defined, no-any-return]


PLUGIN = S7Plugin()
