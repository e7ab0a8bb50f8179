"""Five YAML files → one validated, immutable Snapshot, or every problem at once.

`lint(dir)` and `load_snapshot(dir)` run the same checks: schema first (structure, types,
ranges), then the rules a schema cannot say (cross references, overlapping addresses, `len`
against the datatype, scale expressions, topic templates). Entries with schema errors are
not built, but their ids still count as known, so one typo gives one message, not a cascade.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from edge_gateway.config import schema
from edge_gateway.config.expr import compile_for_tag
from edge_gateway.config.model import FILES, NAMES, Backoff, BusCfg, Connector, GatewayCfg, Snapshot, WalCfg
from edge_gateway.config.problems import ConfigError
from edge_gateway.config.source import Problem, Source, positive, read
from edge_gateway.config.units import parse_duration, parse_size
from edge_gateway.core import registry
from edge_gateway.core.driver import Built, DeviceItem, DriverPlugin, EndpointItem, TagItem

OPTIONAL = {"gateway"}
RESERVED_KINDS = ("wasm",)  # a driver kind named by the design, not built in this release

DEFAULT_KIND = "mqtt5"  # connector.yml `kind` when an entry names none


def lint(directory: str | Path) -> list[Problem]:
    """Every error and warning of a config directory, sorted by file and line."""
    return _Build(Path(directory)).run()[1]


def load_snapshot(directory: str | Path, base: str | Path | None = None) -> Snapshot:
    """`base`: what relative paths in the files are relative to, when not their own directory (a
    configuration store's revision directory changes with every revision; the state directory does not)."""
    snapshot, problems = _Build(Path(directory), Path(base) if base is not None else None).run()
    errors = [p for p in problems if p.severity == "error"]
    if errors or snapshot is None:
        raise ConfigError(errors or problems)
    return snapshot


class _Build:
    def __init__(self, directory: Path, base: Path | None = None) -> None:
        self.dir = directory
        self.base = base if base is not None else directory
        self.src: dict[str, Source] = {}
        # Built-in plugins with their own builders (`plugin.config`: endpoint, device, tag, check), reached
        # through the registry: each is handed only its own entries, and this builder as `b`.
        self._own: dict[str, Any] = {n: p for n, p in registry.drivers().items() if not p.generic}
        self._owner: dict[str, Any] = {}  # device id → its own-builders plugin (by the entry's proto)
        # Plugins on the generic tables (core/driver.py BaseDriver): what was built of their entries.
        self._generic = {n: p for n, p in registry.drivers().items() if p.generic}
        self._plugin_device_ids: dict[str, DriverPlugin | None] = {}
        self._plugin_devices: dict[str, DeviceItem] = {}
        self._plugin_tags: list[TagItem] = []
        self._relative: dict[str, str] = {}  # resolved → as written, for Snapshot.relative_paths
        self._tags: list[Any] = []  # every plugin's built tags, in file order

    def run(self) -> tuple[Snapshot | None, list[Problem]]:
        data: dict[str, Any] = {}
        bad: dict[str, set[tuple]] = {}
        if not self.dir.is_dir():
            return None, [Problem(str(self.dir), 1, message="not a directory")]
        for name, fname in FILES.items():
            path = self.dir / fname
            shown = str(path)
            if not path.exists():
                src = Source(shown)
                if name not in OPTIONAL:
                    src.problems.append(Problem(shown, 1, message=f"missing: {fname} is required"))
                self.src[name] = src
                data[name] = None
                bad[name] = set()
                continue
            src = read(path, shown)
            self.src[name] = src
            if src.root is None and src.problems:
                data[name], bad[name] = None, set()
                continue
            empty: Any = [] if name == "variables" else {}
            data[name] = empty if src.data is None else src.data
            bad[name] = schema.check(src, name, data[name])
            if type(data[name]) is not type(empty):
                # `42` or a list as endpoints.yml: the schema reported it at its line; build nothing from it.
                data[name] = empty
        snapshot = None
        if all(data.get(n) is not None or n in OPTIONAL for n in NAMES):
            snapshot = self._build(data, bad)
        problems = [p for s in self.src.values() for p in s.problems]
        problems.sort(key=_order)
        if any(p.severity == "error" for p in problems):
            snapshot = None
        return snapshot, problems

    # -- building ----------------------------------------------------------------------------------
    def _build(self, data: dict[str, Any], bad: dict[str, set[tuple]]) -> Snapshot:
        s = self.src
        gen_ep_data, ep_table = self._split_generic(data["endpoints"])
        plugin_endpoints = self._each(gen_ep_data, bad["endpoints"], s["endpoints"], self._plugin_endpoint)
        endpoints: dict[str, dict[str, Any]] = {}  # plugin → its endpoints built
        for name, p in self._own.items():
            mine = {k: e for k, e in ep_table.items() if isinstance(e, dict) and e.get("scheme") in p.schemes}
            endpoints[name] = self._each(mine, bad["endpoints"], s["endpoints"], partial(p.config.endpoint, self))
        drv_table, gen_drv_data = _split(data["drivers"], self._is_plugin_device)
        self._plugin_device_ids = dict.fromkeys(gen_drv_data)
        plugin_devices = self._each(
            gen_drv_data,
            bad["drivers"],
            s["drivers"],
            lambda i, d, src: self._plugin_device(i, d, src, plugin_endpoints, data["endpoints"]),
        )
        self._plugin_devices_built = set(plugin_devices)
        devices: dict[str, dict[str, Any]] = {}  # plugin → its devices built
        for name, p in self._own.items():
            mine = {k: d for k, d in drv_table.items() if isinstance(d, dict) and d.get("proto") == name}
            self._owner.update(dict.fromkeys(mine, p))
            build = partial(p.config.device, self, endpoints=endpoints[name], known=data["endpoints"])
            devices[name] = self._each(mine, bad["drivers"], s["drivers"], build)
        tags = self._variables(data["variables"], bad["variables"], devices, set(data["drivers"]))
        for name, p in self._own.items():
            p.config.check(self, Built(endpoints[name], devices[name], *tags[name]))
        connectors = self._each(data["connector"], bad["connector"], s["connector"], self._connector)
        if isinstance(data["connector"], dict) and len(data["connector"]) != 1 and not bad["connector"]:
            s["connector"].error((), f"exactly one connector is supported, found {len(data['connector'])}")
        gateway = GatewayCfg()
        if data.get("gateway") is not None and not bad["gateway"]:
            gateway = self._gateway(data["gateway"], s["gateway"])
        digest = hashlib.sha256()
        for name in NAMES:
            digest.update(name.encode() + b"\0" + s[name].raw + b"\0")
        built_endpoints = {k: e for es in (plugin_endpoints, *endpoints.values()) for k, e in es.items()}
        built_devices = {k: d for ds in (plugin_devices, *devices.values()) for k, d in ds.items()}
        return Snapshot(
            connectors=connectors,
            gateway=gateway,
            revision=digest.hexdigest()[:12],
            directory=str(self.dir),
            relative_paths=dict(self._relative),
            plugin_endpoints={k: built_endpoints[k] for k in data["endpoints"] if k in built_endpoints},
            plugin_devices={k: built_devices[k] for k in data["drivers"] if k in built_devices},
            plugin_tags=tuple(self._tags),
        )

    def _each(self, table: Any, bad: set[tuple], src: Source, build: Callable[[str, dict, Source], Any]) -> dict:
        out: dict[str, Any] = {}
        if not isinstance(table, dict):
            return out
        for ident, body in table.items():
            if (ident,) in bad or not isinstance(body, dict):
                continue
            item = build(ident, body, src)
            if item is not None:
                out[ident] = item
        return out

    def _path(self, value: str) -> str:
        """A path from a file: relative paths are relative to the config directory (or `base`)."""
        p = Path(value)
        if p.is_absolute():
            return str(p)
        resolved = str((self.base / p).resolve())
        self._relative[resolved] = value
        return resolved

    # -- kinds, and plugins on the generic tables ----------------------------------------------------------
    def _kind_ok(self, ident: str, d: dict, src: Source) -> bool:
        """`kind: static` is built in; `kind: dyn` names an installed plugin (by its `proto`)."""
        kind, proto = d.get("kind", "static"), d.get("proto")
        if kind in RESERVED_KINDS:
            src.error(
                (ident, "kind"),
                f"{ident}: kind {kind!r} is reserved, not supported in this release; use kind: static or dyn",
            )
            return False
        builtin = isinstance(proto, str) and registry.is_builtin(proto)
        if kind == "dyn" and builtin:
            src.error(
                (ident, "kind"), f"{ident}: proto {proto} is built in: use kind: static (dyn names an installed plugin)"
            )
            return False
        if kind == "static" and isinstance(proto, str) and proto in registry.drivers() and not builtin:
            src.error((ident, "kind"), f"{ident}: proto {proto} is an installed plugin, not built in: use kind: dyn")
            return False
        return True

    def _split_generic(self, table: Any) -> tuple[dict[str, Any], Any]:
        """(endpoints whose scheme a generic plugin owns, the rest)."""
        if not isinstance(table, dict) or not self._generic:
            return {}, table
        schemes = {sc for p in self._generic.values() for sc in p.schemes}
        yes = {
            k: v
            for k, v in table.items()
            if isinstance(v, dict) and isinstance(v.get("scheme"), str) and v["scheme"] in schemes
        }  # a scheme of the wrong type (a mapping, say) is the schema's error, not a TypeError here
        return yes, {k: v for k, v in table.items() if k not in yes}

    def _is_plugin_device(self, d: dict) -> bool:
        """A device of a generic plugin, or naming one that is not installed (reported there)."""
        proto = d.get("proto")
        return isinstance(proto, str) and proto not in self._own  # any other type: the schema reports it

    def _plugin_endpoint(self, ident: str, e: dict, src: Source) -> EndpointItem | None:
        plugin = registry.driver_for_scheme(e["scheme"])
        assert plugin is not None  # _split_generic chose it by scheme
        opts = e.get("opts") or {}
        if schema.check_fragment(src, "endpoints", dict(plugin.schema().endpoint_opts), opts, (ident, "opts")):
            return None
        try:
            built = plugin.build_endpoint(ident, e["scheme"], opts)
        except ValueError as err:
            src.error((ident,), f"{ident}: {err}")
            return None
        where = f"{src.name}:{src.line((ident,))}"
        return EndpointItem(ident, e["scheme"], e["host"], e.get("port"), built, src=where)

    def _plugin_device(
        self, ident: str, d: dict, src: Source, endpoints: dict[str, EndpointItem], known: dict[str, Any]
    ) -> DeviceItem | None:
        proto = d["proto"]
        self._plugin_device_ids[ident] = None
        if not self._kind_ok(ident, d, src):
            return None
        if d.get("kind", "static") == "static" and proto not in registry.names(registry.DRIVERS):
            builtin = ", ".join(n for n in registry.drivers() if registry.is_builtin(n))
            why = f"{ident}: proto {proto!r} is not supported in this release (supported: {builtin})"
            src.error((ident, "proto"), why)
            return None
        try:
            plugin = registry.driver(proto)
        except registry.PluginError as err:
            src.error((ident, "proto"), f"{ident}: {err}")
            return None
        self._plugin_device_ids[ident] = plugin
        ep = d["endpoint_id"]
        ok = True
        if ep not in known:
            src.error((ident, "endpoint_id"), f"{ident}: unknown endpoint_id {ep!r}")
            ok = False
        elif isinstance(known[ep], dict) and known[ep].get("scheme") not in plugin.schemes:
            src.error(
                (ident, "endpoint_id"),
                f"{ident}: proto {proto} needs an endpoint of scheme {' or '.join(plugin.schemes)}; "
                f"{ep} has scheme {known[ep].get('scheme')}",
            )
            ok = False
        if schema.check_fragment(src, "drivers", dict(plugin.schema().cfg), d["cfg"], (ident, "cfg")):
            return None
        try:
            cfg = plugin.build_cfg(ident, d["cfg"])
        except ValueError as err:
            src.error((ident, "cfg"), f"{ident}: {err}")
            return None
        if not ok or ep not in endpoints:
            return None  # a broken endpoint is reported at the endpoint
        kind = d.get("kind", "static")
        return DeviceItem(ident, kind, proto, ep, cfg, src=f"{src.name}:{src.line((ident,))}")

    def _plugin_tag(self, i: int, v: dict, src: Source) -> TagItem | None:
        tag, did = v["tag"], v["driver_id"]
        plugin = self._plugin_device_ids[did]
        if "address" not in v:
            src.error((i,), f"{tag}: missing required key 'address'")
            return None
        if plugin is None:
            return None  # its device is reported already
        if schema.check_fragment(src, "variables", dict(plugin.schema().address), v["address"], (i, "address")):
            return None
        try:
            address = plugin.build_address(tag, v["datatype"], v["address"])
        except ValueError as err:
            src.error((i, "address"), f"{tag}: {err}")
            return None
        scale = None
        if "scale" in v:
            scale, scale_ok = compile_for_tag(src, (i, "scale"), tag, v["datatype"], v["scale"])
            if not scale_ok:
                return None
        if did not in self._plugin_devices_built:
            return None
        return TagItem(
            tag, did, v.get("access", "R"), v["datatype"], address, scale, v.get("unit"), f"{src.name}:{src.line((i,))}"
        )

    def _variables(
        self, items: Any, bad: set[tuple], devices: dict[str, dict[str, Any]], known_drivers: set[str]
    ) -> dict[str, tuple[list[Any], dict[str, int], dict[str, int]]]:
        """Every tag, each built by the plugin of its device; → per own-builders plugin (its tags, every
        tag name → its line, tag → its entry index) for its `check`."""
        src = self.src["variables"]
        own: dict[str, list[Any]] = {name: [] for name in self._own}
        tags: dict[str, int] = {}
        index: dict[str, int] = {}
        out = {name: (own[name], tags, index) for name in self._own}
        if not isinstance(items, list):
            return out
        for i, v in enumerate(items):
            if (i,) in bad or not isinstance(v, dict):
                continue
            tag, did = v["tag"], v["driver_id"]
            if tag in tags:
                src.error((i, "tag"), f"duplicate tag {tag!r} (first at line {tags[tag]})")
                continue
            tags[tag] = src.line((i, "tag"))
            if did not in known_drivers:
                hint = schema.did_you_mean(did, known_drivers)
                src.error((i, "driver_id"), f"{tag}: unknown driver_id {did!r}{hint}")
                continue
            built: Any = None
            if did in self._plugin_device_ids:
                built = self._plugin_tag(i, v, src)
                if built is not None:
                    self._plugin_tags.append(built)
            elif did in self._owner:
                p = self._owner[did]
                built = p.config.tag(self, i, v, src, devices[p.name])
                if built is not None:
                    own[p.name].append(built)
            if built is not None:  # a device whose entry is broken is reported there
                self._tags.append(built)
                index[tag] = i
        return out

    def _connector(self, ident: str, c: dict, src: Source) -> Connector | None:
        """One connector.yml entry, by its kind's own builder (`ConnectorPlugin.build`, the MQTT 5
        connector's) or, for a kind without one, the generic one."""
        build = getattr(registry.connectors().get(c.get("kind", DEFAULT_KIND)), "build", None)
        return build(self, ident, c, src) if build is not None else self._plugin_connector(ident, c, src)

    def _plugin_connector(self, ident: str, c: dict, src: Source) -> Connector | None:
        """A connector of another installed kind (its schema, from the plugin, is already checked):
        the delivery keys the runner reads, with mqtt5's defaults; every other key in `options`."""
        ok = True
        backoff = c.get("backoff") or {}
        for key in ("max_interval",):
            ok = positive(src, (ident, key), c.get(key), parse_duration) and ok
        for key in ("base", "max"):
            ok = positive(src, (ident, "backoff", key), backoff.get(key), parse_duration) and ok
        if not ok:
            return None
        bk = Backoff(parse_duration(backoff.get("base", "500ms")), parse_duration(backoff.get("max", "2m")))
        delivery = {"kind", "qos", "batch", "max_bytes", "max_interval", "compression", "backoff", "cmd_max_bytes",
                    "cmd_dedup"}  # fmt: skip
        kw: dict[str, Any] = {k: c[k] for k in ("qos", "batch", "compression", "cmd_dedup") if k in c}
        return Connector(
            id=ident,
            kind=str(c["kind"]),
            client_id=ident,
            max_bytes=parse_size(c.get("max_bytes", "1MiB")),
            max_interval=parse_duration(c.get("max_interval", "1s")),
            cmd_max_bytes=parse_size(c.get("cmd_max_bytes", "64KiB")),
            backoff=bk,
            options={k: v for k, v in c.items() if k not in delivery},
            src=f"{src.name}:{src.line((ident,))}",
            **kw,
        )

    def _gateway(self, g: dict, src: Source) -> GatewayCfg:
        b, w = g.get("bus") or {}, g.get("wal") or {}
        bus = BusCfg(b.get("capacity", 65536), b.get("pause_hi", 0.8), b.get("resume_lo", 0.6))
        if bus.resume_lo >= bus.pause_hi:
            src.error(("bus",), f"bus: resume_lo ({bus.resume_lo}) must be below pause_hi ({bus.pause_hi})")
        wal = WalCfg(
            dir=self._path(w.get("dir", WalCfg.dir)),
            segment_bytes=parse_size(w.get("segment_bytes", "16MiB")),
            flush_ms=w.get("flush_ms", 100),
            max_bytes=parse_size(w.get("max_bytes", "4GiB")),
            full_policy=w.get("full_policy", "drop_oldest"),
        )
        if wal.segment_bytes < 4096:
            src.error(("wal", "segment_bytes"), "wal: segment_bytes must be at least 4KiB")
        if wal.max_bytes < 2 * wal.segment_bytes:
            src.error(("wal", "max_bytes"), "wal: max_bytes must hold at least two segments")
        listen = (g.get("metrics") or {}).get("listen", "127.0.0.1:9100")
        host, _, port = listen.rpartition(":")
        if not 1 <= int(port) <= 65535:
            src.error(("metrics", "listen"), f"metrics.listen: port {port} out of range 1..65535")
        sock = (g.get("control") or {}).get("socket", GatewayCfg.control_socket)
        return GatewayCfg(bus, wal, host.strip("[]"), int(port), self._path(sock))


def _split(table: Any, pred: Callable[[dict], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entries where pred is false, entries where it is true); non-mapping entries go to the first."""
    if not isinstance(table, dict):
        return {}, {}
    yes = {k: v for k, v in table.items() if isinstance(v, dict) and pred(v)}
    return {k: v for k, v in table.items() if k not in yes}, yes


def _order(p: Problem) -> tuple[int, int, int]:
    """Files in the order a reader meets them (endpoints first), then by line and column."""
    stem = Path(p.file).stem
    return (NAMES.index(stem) if stem in NAMES else len(NAMES), p.line, p.column)
