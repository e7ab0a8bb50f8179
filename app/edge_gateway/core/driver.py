"""The driver contract: what a protocol plugin (Modbus, the MQTT source, a third-party one) gives the
gateway, and the generic items the config loader builds for it.

Words, once: a **driver** is the protocol plugin (`proto: modbus`); a **device** is one entry of
drivers.yml (one unit, one PLC, one set of subscriptions), keyed by its `driver_id` as users and the
metric labels know it; an **endpoint** is one entry of endpoints.yml, served by exactly one worker
thread of the driver that owns its scheme; a **tag** is one entry of variables.yml.

A plugin supplies, through `DriverPlugin`:
- `schemes` it owns and the JSON-Schema fragments (`schema()`) of its endpoint `opts`, its device
  `cfg` and its tag `address` — the loader validates each entry with them, at its file:line;
- the builders from validated YAML to its frozen model (`build_endpoint`, `build_cfg`, `build_address`;
  the generic defaults freeze the mapping as it is);
- the worker factory (`start`: one thread per endpoint), the reload plan (`plan_reload`: which of its
  endpoints a change restarts, and `apply_step`), its staleness rule (`stale_after`), its status;
- the write rules (`resolve_write` validates a cloud command against the running snapshot, raising
  `Refused`; `submit_write` hands it to the worker that owns the tag): their single home.

`BaseDriver` implements all of it over the generic tables (`Snapshot.plugin_*`), so a plugin written
outside the project only says what is specific: its schemes, fragments and `worker()`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Protocol, runtime_checkable

from edge_gateway.core.frame import Value


class Refused(Exception):
    """A command that is not run: `reason` is the ack's error code (unknown_tag, read_only, …)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Worker(Protocol):
    """One thread per endpoint: the supervisor judges it by `heartbeat` (time.monotonic of its last
    progress) and `is_alive()`."""

    heartbeat: float

    def is_alive(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SchemaFragments:
    """JSON-Schema fragments (draft 2020-12) of a plugin's parts of the YAML files."""

    endpoint_opts: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    cfg: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    address: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class EndpointItem:
    """An endpoints.yml entry of a plugin that uses the generic tables."""

    id: str
    scheme: str
    host: str
    port: int | None
    opts: Any  # what the plugin's build_endpoint made of `opts`
    src: str = field(default="", compare=False)


@dataclass(frozen=True)
class DeviceItem:
    """A drivers.yml entry (a device) of a plugin that uses the generic tables."""

    id: str
    kind: str  # static | dyn
    proto: str
    endpoint_id: str
    cfg: Any  # what build_cfg made of `cfg`
    src: str = field(default="", compare=False)


@dataclass(frozen=True)
class TagItem:
    """A variables.yml entry of a plugin that uses the generic tables."""

    tag: str
    driver_id: str  # the device
    access: Literal["R", "W", "RW"]
    datatype: str
    address: Any  # what build_address made of `address`
    scale: Any = None  # edge_gateway.config.expr.Scale
    unit: str | None = None
    src: str = field(default="", compare=False)

    @property
    def writable(self) -> bool:
        return "W" in self.access


@dataclass(frozen=True)
class WriteTarget:
    """A command validated by the plugin that owns the tag, ready for `submit_write`."""

    plugin: str
    endpoint_id: str
    tag: str
    item: Any  # the plugin's own tag model


class Writes(Protocol):
    """The runtime's side of the downlink: the connector hands it a parsed command's tag and value."""

    def resolve(self, tag: str, value: Value) -> WriteTarget:
        """Validate against the running configuration (the owning plugin's rules); raises Refused."""
        ...

    def submit(self, target: WriteTarget, value: Value) -> Future[None]:
        """Queue the write on the worker that owns the tag; the Future resolves with its outcome."""
        ...


@dataclass(frozen=True)
class ReloadStep:
    """One step of a reload plan for one endpoint: start/stop/restart its worker, or `update` it in
    place (`devices` names what changed). `apply_step` carries it out; the rollback applies the
    reverse plan from the old snapshot."""

    plugin: str
    endpoint_id: str
    action: Literal["start", "stop", "restart", "update"]
    devices: tuple[str, ...] = ()

    def describe(self) -> str:
        extra = f" ({', '.join(self.devices)})" if self.devices else ""
        return f"{self.plugin} {self.action} {self.endpoint_id}{extra}"


@dataclass
class RuntimeContext:
    """What the runtime hands a plugin when it starts a worker."""

    bus: Any  # edge_gateway.bus.framebus.FrameBus
    state_dir: str  # persistent state beside the WAL (sessions, …)


@runtime_checkable
class DriverPlugin(Protocol):
    name: str  # drivers.yml `proto`, and the entry-point name
    schemes: tuple[str, ...]  # endpoints.yml `scheme`s it owns
    status_section: str  # key of `edge-ctl status` its endpoints appear under: lines | sources
    generic: bool  # True: the loader builds its items (build_*); False: its `config` does (OwnBuilders)

    def schema(self) -> SchemaFragments: ...

    # -- config: validated YAML → frozen model (generic plugins only) --------------------------------
    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> Any: ...

    def build_cfg(self, ident: str, cfg: Mapping[str, Any]) -> Any: ...

    def build_address(self, tag: str, datatype: str, address: Mapping[str, Any]) -> Any: ...

    # -- runtime ----------------------------------------------------------------------------------------
    def endpoints(self, snap: Any) -> Sequence[str]: ...

    def start(self, endpoint_id: str, snap: Any, ctx: RuntimeContext) -> Worker | None: ...

    def plan_reload(self, old: Any, new: Any) -> list[ReloadStep]: ...

    def apply_step(self, step: ReloadStep, worker: Worker | None, snap: Any, ctx: RuntimeContext) -> Worker | None: ...

    def stale_after(self, endpoint_id: str, snap: Any, worker: Worker) -> float: ...

    def resolve_write(self, snap: Any, tag: str, value: Value) -> WriteTarget | None: ...

    def submit_write(self, worker: Worker, target: WriteTarget, value: Value) -> Future[None]: ...

    def status(self, endpoint_id: str, snap: Any, worker: Worker, now: float) -> dict[str, Any]: ...

    def health(self, endpoint_id: str, entry: Mapping[str, Any]) -> list[str]: ...

    def summary(self, workers: Mapping[str, Worker]) -> str: ...


class OwnBuilders(Protocol):
    """`plugin.config` of a plugin with `generic = False` (the built-ins Modbus and the MQTT source): it
    builds its entries into its own frozen model, with the loader (`b`: its sources, `_path`, `_kind_ok`)
    at hand. Each call gets only entries the plugin owns (endpoints by scheme, devices by proto, tags by
    device) and the plugin's own items built so far; a problem goes to `src` at its file:line."""

    def endpoint(self, b: Any, ident: str, entry: dict, src: Any) -> Any | None: ...

    def device(self, b: Any, ident: str, entry: dict, src: Any, endpoints: dict, known: dict) -> Any | None: ...

    def tag(self, b: Any, i: int, entry: dict, src: Any, devices: dict) -> Any | None: ...

    def check(self, b: Any, built: Built) -> None:
        """The rules across entries (overlaps, uniqueness), once everything is built."""
        ...


@dataclass(frozen=True)
class Built:
    """What the loader built of one plugin's entries, for its `OwnBuilders.check`."""

    endpoints: dict[str, Any]
    devices: dict[str, Any]
    tags: list[Any]
    names: dict[str, int]  # every tag of the files (any plugin's) → its line in variables.yml
    index: dict[str, int]  # every built tag → its entry's index in variables.yml


def freeze(value: Any) -> Any:
    """A YAML mapping/list as a hashable, comparable value (tuples of pairs), for the generic builders."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def package_fragments(module: str) -> SchemaFragments:
    """The `schema.json` beside a plugin's module (keys `endpoint_opts`, `cfg`, `address`), so a plugin's
    schema lives in its folder as a data file; the permissive defaults when it has none."""
    mod = sys.modules.get(module)
    package = (mod.__package__ if mod is not None else None) or module.rpartition(".")[0]
    if not package:
        return SchemaFragments()
    f = resources.files(package).joinpath("schema.json")
    if not f.is_file():
        return SchemaFragments()
    raw = json.loads(f.read_text())
    return SchemaFragments(**{k: raw[k] for k in ("endpoint_opts", "cfg", "address") if k in raw})


class BaseDriver:
    """A driver plugin over the generic tables: subclass it, set `name`, `schemes`, and `fragments` or
    ship a `schema.json` beside the module (`package_fragments`), and implement `worker()`; override
    `build_*` to turn YAML into your own frozen model, `write()` to accept commands. One worker per
    endpoint; any change to an endpoint, a device on it or one of their tags restarts that endpoint's
    worker."""

    name = ""
    schemes: tuple[str, ...] = ()
    status_section = "lines"
    generic = True
    fragments: SchemaFragments | None = None  # None: the package's schema.json, read on first use
    stale_s = 30.0  # a worker whose heartbeat is older than this is hung

    def schema(self) -> SchemaFragments:
        if self.fragments is None:
            self.fragments = package_fragments(type(self).__module__)
        return self.fragments

    def build_endpoint(self, ident: str, scheme: str, opts: Mapping[str, Any]) -> Any:
        return freeze(opts)

    def build_cfg(self, ident: str, cfg: Mapping[str, Any]) -> Any:
        return freeze(cfg)

    def build_address(self, tag: str, datatype: str, address: Mapping[str, Any]) -> Any:
        return freeze(address)

    # -- what a subclass implements ---------------------------------------------------------------------
    def worker(
        self, endpoint: EndpointItem, devices: Sequence[DeviceItem], tags: Sequence[TagItem], ctx: RuntimeContext
    ) -> Worker:
        """A started worker thread for one endpoint."""
        raise NotImplementedError

    def write(self, worker: Worker, tag: TagItem, value: Value) -> Future[None]:
        """Run a validated write on the worker; the default plugin is read-only."""
        raise Refused("read_only", f"{tag.tag}: driver {self.name} does not write")

    # -- the contract, over Snapshot.plugin_* -----------------------------------------------------------
    def _parts(self, endpoint_id: str, snap: Any) -> tuple[EndpointItem, list[DeviceItem], list[TagItem]]:
        ep = snap.plugin_endpoints[endpoint_id]
        devices = [d for d in snap.plugin_devices.values() if d.endpoint_id == endpoint_id]
        ids = {d.id for d in devices}
        return ep, devices, [t for t in snap.plugin_tags if t.driver_id in ids]

    def endpoints(self, snap: Any) -> list[str]:
        return [
            e.id
            for e in snap.plugin_endpoints.values()
            if e.scheme in self.schemes and any(d.endpoint_id == e.id for d in snap.plugin_devices.values())
        ]

    def start(self, endpoint_id: str, snap: Any, ctx: RuntimeContext) -> Worker | None:
        ep, devices, tags = self._parts(endpoint_id, snap)
        return self.worker(ep, devices, tags, ctx) if devices else None

    def plan_reload(self, old: Any, new: Any) -> list[ReloadStep]:
        before, after = set(self.endpoints(old)), set(self.endpoints(new))
        steps = [ReloadStep(self.name, e, "stop") for e in sorted(before - after)]
        steps += [ReloadStep(self.name, e, "start") for e in sorted(after - before)]
        steps += [
            ReloadStep(self.name, e, "restart")
            for e in sorted(before & after)
            if self._parts(e, old) != self._parts(e, new)
        ]
        return steps

    def apply_step(self, step: ReloadStep, worker: Worker | None, snap: Any, ctx: RuntimeContext) -> Worker | None:
        if worker is not None:
            worker.stop()
        if step.action == "stop" or step.endpoint_id not in self.endpoints(snap):
            return None
        return self.start(step.endpoint_id, snap, ctx)

    def stale_after(self, endpoint_id: str, snap: Any, worker: Worker) -> float:
        return self.stale_s

    def resolve_write(self, snap: Any, tag: str, value: Value) -> WriteTarget | None:
        mine = {d.id: d for d in snap.plugin_devices.values() if d.proto == self.name}
        for t in snap.plugin_tags:
            if t.tag == tag and t.driver_id in mine:
                if not t.writable:
                    raise Refused("read_only", f"{tag} has access {t.access}: not writable")
                return WriteTarget(self.name, mine[t.driver_id].endpoint_id, tag, t)
        return None

    def submit_write(self, worker: Worker, target: WriteTarget, value: Value) -> Future[None]:
        return self.write(worker, target.item, value)

    def status(self, endpoint_id: str, snap: Any, worker: Worker, now: float) -> dict[str, Any]:
        ep = snap.plugin_endpoints[endpoint_id]
        st = getattr(worker, "status", None)
        return {
            "scheme": ep.scheme,
            "address": ep.host if ep.port is None else f"{ep.host}:{ep.port}",
            "alive": worker.is_alive(),
            "state": "up" if worker.is_alive() else "dead",
            "heartbeat_age_s": round(now - worker.heartbeat, 2),
            "drivers": st() if callable(st) else {},
        }

    def health(self, endpoint_id: str, entry: Mapping[str, Any]) -> list[str]:
        if entry.get("state") != "up":
            return [f"line {endpoint_id} ({entry.get('address')}) is {entry.get('state')}"]
        # A worker that lives but cannot reach its device (status() entries per device with a `state`).
        drivers = entry.get("drivers")
        return [
            f"driver {d_id} on {endpoint_id} ({entry.get('address')}) is {d['state']}"
            + (f": {d['last_error']}" if d.get("last_error") else "")
            for d_id, d in (drivers.items() if isinstance(drivers, Mapping) else ())
            if isinstance(d, Mapping) and d.get("state") not in (None, "up")
        ]

    def summary(self, workers: Mapping[str, Worker]) -> str:
        up = sum(1 for w in workers.values() if w.is_alive())
        return f"{self.name} {up}/{len(workers)}"
