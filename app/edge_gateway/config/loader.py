"""Five YAML files → one validated, immutable Snapshot, or every problem at once.

`lint(dir)` and `load_snapshot(dir)` run the same checks: schema first (structure, types,
ranges), then the rules a schema cannot say (cross references, overlapping addresses, `len`
against the datatype, scale expressions, topic templates). Entries with schema errors are
not built, but their ids still count as known, so one typo gives one message, not a cascade.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from edge_gateway.config import schema
from edge_gateway.config.expr import compile_for_tag
from edge_gateway.config.model import Backoff, BusCfg, Connector, GatewayCfg, Snapshot, TlsFiles, WalCfg
from edge_gateway.config.source import Problem, Source, positive, read, secret_file
from edge_gateway.config.units import parse_duration, parse_size
from edge_gateway.core import registry
from edge_gateway.core.driver import DeviceItem, DriverPlugin, EndpointItem, TagItem

FILES = {name: f"{name}.yml" for name in schema.NAMES}
OPTIONAL = {"gateway"}
RESERVED_KINDS = ("wasm",)  # a driver kind named by the design, not built in this release

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


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
        # MQTT-source parts (drivers/mqtt_source/config.py, via the registry): drivers by id, what was built
        self._mqtt_driver_ids: set[str] = set()
        self._mqtt_drivers: dict[str, Any] = {}
        self._mqtt_tags: list[Any] = []
        # The MQTT source's builders and rules, reached through the registry like every plugin's.
        self.mqtt: Any = registry.driver("mqtt").config  # type: ignore[attr-defined]
        self.modbus: Any = registry.driver("modbus").config  # type: ignore[attr-defined]
        # Plugins on the generic tables (core/driver.py BaseDriver): what was built of their entries.
        self._generic = {n: p for n, p in registry.drivers().items() if p.generic}
        self._plugin_device_ids: dict[str, DriverPlugin | None] = {}
        self._plugin_devices: dict[str, DeviceItem] = {}
        self._plugin_tags: list[TagItem] = []
        self._relative: dict[str, str] = {}  # resolved → as written, for Snapshot.relative_paths

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
        if all(data.get(n) is not None or n in OPTIONAL for n in schema.NAMES):
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
        ep_data, mqtt_ep_data = _split(ep_table, lambda e: self.mqtt.is_mqtt_scheme(e.get("scheme")))
        plugin_endpoints = self._each(gen_ep_data, bad["endpoints"], s["endpoints"], self._plugin_endpoint)
        endpoints = self._each(
            ep_data, bad["endpoints"], s["endpoints"], lambda i, e, src: self.modbus.endpoint(self, i, e, src)
        )
        mqtt_endpoints: dict[str, Any] = self._each(
            mqtt_ep_data, bad["endpoints"], s["endpoints"], lambda i, e, src: self.mqtt.endpoint(i, e, src, self._path)
        )
        known_endpoints = set(data["endpoints"])
        drv_table, gen_drv_data = _split(data["drivers"], self._is_plugin_device)
        drv_data, mqtt_drv_data = _split(drv_table, lambda d: d.get("proto") == "mqtt")
        self._plugin_device_ids = dict.fromkeys(gen_drv_data)
        plugin_devices = self._each(
            gen_drv_data,
            bad["drivers"],
            s["drivers"],
            lambda i, d, src: self._plugin_device(i, d, src, plugin_endpoints, data["endpoints"]),
        )
        self._plugin_devices_built = set(plugin_devices)
        self._mqtt_driver_ids = set(mqtt_drv_data)
        for ident, d in drv_data.items():
            if (ident,) not in bad["drivers"] and d.get("endpoint_id") in mqtt_ep_data:
                s["drivers"].error(
                    (ident, "endpoint_id"),
                    f"{ident}: proto {d['proto']} needs a Modbus endpoint; {d['endpoint_id']} is an MQTT broker "
                    f"(scheme {mqtt_ep_data[d['endpoint_id']]['scheme']})",
                )
        drivers = self._each(
            drv_data,
            bad["drivers"],
            s["drivers"],
            lambda i, d, src: self.modbus.device(self, i, d, src, endpoints, known_endpoints),
        )
        self._mqtt_drivers = self._each(
            mqtt_drv_data,
            bad["drivers"],
            s["drivers"],
            lambda i, d, src: self._mqtt_driver(i, d, src, mqtt_endpoints, data["endpoints"]),
        )
        self.mqtt.overlapping_subscriptions(self._mqtt_drivers.values(), s["drivers"])
        self.modbus.unique_units(self, drivers, endpoints)
        variables = self._variables(data["variables"], bad["variables"], drivers, set(data["drivers"]))
        connectors = self._each(data["connector"], bad["connector"], s["connector"], self._connector)
        if isinstance(data["connector"], dict) and len(data["connector"]) != 1 and not bad["connector"]:
            s["connector"].error((), f"exactly one connector is supported, found {len(data['connector'])}")
        gateway = GatewayCfg()
        if data.get("gateway") is not None and not bad["gateway"]:
            gateway = self._gateway(data["gateway"], s["gateway"])
        digest = hashlib.sha256()
        for name in schema.NAMES:
            digest.update(name.encode() + b"\0" + s[name].raw + b"\0")
        return Snapshot(
            endpoints=endpoints,
            drivers=drivers,
            variables=tuple(variables),
            connectors=connectors,
            gateway=gateway,
            revision=digest.hexdigest()[:12],
            directory=str(self.dir),
            mqtt_endpoints=mqtt_endpoints,
            mqtt_drivers=self._mqtt_drivers,
            mqtt_tags=tuple(self._mqtt_tags),
            relative_paths=dict(self._relative),
            plugin_endpoints=plugin_endpoints,
            plugin_devices=plugin_devices,
            plugin_tags=tuple(self._plugin_tags),
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

    def _mqtt_driver(
        self, ident: str, d: dict, src: Source, endpoints: dict[str, Any], known: dict[str, Any]
    ) -> Any | None:
        """A `proto: mqtt` driver: an MQTT source on an mqtt/mqtts endpoint (drivers/mqtt_source/config.py)."""
        if not self._kind_ok(ident, d, src):
            return None
        ok = True
        ep = d["endpoint_id"]
        if ep not in known:
            src.error((ident, "endpoint_id"), f"{ident}: unknown endpoint_id {ep!r}{schema.did_you_mean(ep, known)}")
            ok = False
        elif isinstance(known[ep], dict) and not self.mqtt.is_mqtt_scheme(known[ep].get("scheme")):
            src.error(
                (ident, "endpoint_id"),
                f"{ident}: proto mqtt needs an mqtt or mqtts endpoint; {ep} has scheme {known[ep].get('scheme')}",
            )
            ok = False
        if schema.check(src, "drivers", d["cfg"], schema_ref="mqtt", base=(ident, "cfg")):
            return None
        cfg = self.mqtt.driver_cfg(ident, d["cfg"], src)
        if not ok or cfg is None or ep not in endpoints:
            return None  # a broken endpoint is reported at the endpoint
        return self.mqtt.driver(ident, d, cfg, src)

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
        """A device of a generic plugin, or `kind: dyn` naming one that is not installed (reported there)."""
        proto = d.get("proto")
        if d.get("kind") == "dyn" and isinstance(proto, str) and not registry.is_builtin(proto):
            return True
        return isinstance(proto, str) and proto in self._generic  # any other type: the schema reports it

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

    def _variables(self, items: Any, bad: set[tuple], drivers: dict[str, Any], known_drivers: set[str]) -> list[Any]:
        src = self.src["variables"]
        out: list[Any] = []
        tags: dict[str, int] = {}
        index: dict[str, int] = {}
        if not isinstance(items, list):
            return out
        for i, v in enumerate(items):
            if (i,) in bad or not isinstance(v, dict):
                continue
            tag = v["tag"]
            if tag in tags:
                src.error((i, "tag"), f"duplicate tag {tag!r} (first at line {tags[tag]})")
                continue
            tags[tag] = src.line((i, "tag"))
            if v["driver_id"] in self._plugin_device_ids:
                pt = self._plugin_tag(i, v, src)
                if pt is not None:
                    self._plugin_tags.append(pt)
                    index[tag] = i
                continue
            if v["driver_id"] in self._mqtt_driver_ids:
                t = self.mqtt.tag(i, v, src, self._mqtt_drivers.get(v["driver_id"]))
                if t is not None:
                    self._mqtt_tags.append(t)
                    index[tag] = i
                continue
            var = self.modbus.variable(self, i, v, src, drivers, known_drivers)
            if var is not None:
                out.append(var)
                index[tag] = i
        self.modbus.overlaps(self, out, src, index)
        self.mqtt.template_shadows(self._mqtt_tags, tags, src, index)
        return out

    def _connector(self, ident: str, c: dict, src: Source) -> Connector | None:
        if c.get("kind", "mqtt5") != "mqtt5":
            return self._plugin_connector(ident, c, src)
        ok = True
        m = re.match(r"^(tcp|tls)://([^/:\s]+)(?::([0-9]+))?$", c["endpoint"])
        assert m is not None  # the schema pattern guarantees it
        scheme: Literal["tcp", "tls"] = "tls" if m.group(1) == "tls" else "tcp"
        host = m.group(2)
        port = int(m.group(3)) if m.group(3) else (8883 if scheme == "tls" else 1883)
        if not 1 <= port <= 65535:
            src.error((ident, "endpoint"), f"{ident}: port {port} out of range 1..65535")
            ok = False
        if "password" in c and "password_file" in c:
            src.error((ident, "password_file"), f"{ident}: give password or password_file, not both")
            ok = False
        if "password_file" in c:
            ok = secret_file(src, (ident, "password_file"), self._path(c["password_file"])) and ok
        backoff = c.get("backoff") or {}
        for key in ("keepalive", "max_interval"):
            ok = positive(src, (ident, key), c.get(key), parse_duration) and ok
        for key in ("base", "max"):
            ok = positive(src, (ident, "backoff", key), backoff.get(key), parse_duration) and ok
        tls_cfg = c.get("tls")
        if tls_cfg and scheme != "tls":
            src.error((ident, "tls"), f"{ident}: tls settings need a tls:// endpoint")
            ok = False
        if tls_cfg and bool(tls_cfg.get("client_cert")) != bool(tls_cfg.get("client_key")):
            src.error((ident, "tls"), f"{ident}: client_cert and client_key go together")
            ok = False
        if scheme == "tls" and not (tls_cfg or {}).get("ca"):
            src.warn(
                (ident, "tls") if tls_cfg else (ident, "endpoint"),
                f"{ident}: tls:// without tls.ca: the broker is checked against the system CA store only",
            )
        defaults = Connector.__dataclass_fields__
        need = {
            "topic": {"tag"},
            "cmd_topic": {"tag"},
            "ack_topic": {"seq"},
            "batch_topic": set(),
            "status_topic": set(),
        }
        allowed = {"tenant", "device"}
        for key, must in need.items():
            text = c.get(key, defaults[key].default)
            names = set(_PLACEHOLDER.findall(text))
            unknown = names - allowed - must
            if unknown:
                src.error((ident, key), f"{ident}: {key} has unknown placeholder(s) {', '.join(sorted(unknown))}")
                ok = False
            if must - names:
                src.error((ident, key), f"{ident}: {key} must contain {{{next(iter(must))}}}")
                ok = False
            if "+" in text or "#" in text:
                src.error((ident, key), f"{ident}: {key} must not contain MQTT wildcards")
                ok = False
        if "{tenant}" not in c.get("cmd_topic", "{tenant}") or "{device}" not in c.get("cmd_topic", "{device}"):
            src.warn(
                (ident, "cmd_topic"),
                f"{ident}: cmd_topic without {{tenant}} and {{device}}: all gateways on the broker run them",
            )
        bk = Backoff(parse_duration(backoff.get("base", "500ms")), parse_duration(backoff.get("max", "2m")))
        if bk.base > bk.max:
            src.error((ident, "backoff"), f"{ident}: backoff.base is larger than backoff.max")
            ok = False
        if not ok:
            return None
        tls = (
            TlsFiles(*(self._path(tls_cfg[k]) if tls_cfg.get(k) else None for k in ("ca", "client_cert", "client_key")))
            if tls_cfg
            else (TlsFiles() if scheme == "tls" else None)
        )
        kw: dict[str, Any] = {
            k: c[k]
            for k in (
                "topic",
                "batch_topic",
                "cmd_topic",
                "ack_topic",
                "status_topic",
                "qos",
                "batch",
                "compression",
                "username",
                "password",
                "cmd_dedup",
            )
            if k in c
        }
        return Connector(
            id=ident,
            kind="mqtt5",
            scheme=scheme,
            host=host,
            port=port,
            client_id=c.get("client_id", c["device"]),
            tenant=c["tenant"],
            device=c["device"],
            password_file=self._path(c["password_file"]) if "password_file" in c else None,
            max_bytes=parse_size(c.get("max_bytes", "1MiB")),
            max_interval=parse_duration(c.get("max_interval", "1s")),
            keepalive=parse_duration(c.get("keepalive", "30s")),
            session_expiry=parse_duration(c.get("session_expiry", "1d")),
            cmd_max_bytes=parse_size(c.get("cmd_max_bytes", "64KiB")),
            backoff=bk,
            tls=tls,
            src=f"{src.name}:{src.line((ident,))}",
            **kw,
        )

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
    return (schema.NAMES.index(stem) if stem in schema.NAMES else len(schema.NAMES), p.line, p.column)
