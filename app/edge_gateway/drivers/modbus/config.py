"""The Modbus parts of the five files → the frozen model (model.py): endpoints (serial, tcp,
tls+tcp, rtu+tcp), devices (`proto: modbus` units) and their register tags, with the rules a schema
cannot say (Modicon refs, `len` against the datatype, overlapping addresses, one unit id per line, the
write rules of writes.py). The loader reaches these through the registry (`PLUGIN.config`: `endpoint`,
`device`, `tag` for each entry the plugin owns, `check` for the rules across entries), passing itself as
`b` (its sources, path resolution and kind rules)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from importlib import resources
from typing import Any, cast

from edge_gateway.config import schema
from edge_gateway.config.expr import Scale, compile_for_tag
from edge_gateway.config.model import TlsFiles
from edge_gateway.config.source import Source, positive
from edge_gateway.config.units import parse_duration, parse_rate
from edge_gateway.core.driver import Built
from edge_gateway.drivers.modbus import writes
from edge_gateway.drivers.modbus.codec import FMT
from edge_gateway.drivers.modbus.model import (
    BIT_TYPES,
    DATATYPE_REGS,
    SCHEMES,
    Address,
    Driver,
    Endpoint,
    ModbusCfg,
    RegType,
    Variable,
)

BROKER_SCHEMES = ("mqtt", "mqtts")  # the MQTT source's endpoints: named in the message of a device put there
MQTT_ONLY = ("topic", "payload")  # the MQTT source's tag keys

# What registers and bits can hold: the datatypes drivers/modbus/codec.py decodes.
MODBUS_DATATYPES = frozenset(FMT) | {"bool", "string", "binary"}


def modicon(ref: int | str) -> tuple[str, int] | None:
    """Modicon reference → (table, 0-based address); None when it is not one.
    5-digit: 00001-09999 coil, 10001-19999 discrete, 30001-39999 input, 40001-49999 holding.
    6-digit: 000001-065536 coil, 100001-165536 discrete, 300001-365536 input, 400001-465536 holding."""
    text = str(ref).strip()
    if not text.isdigit():
        return None
    n = int(text)
    six = len(text) == 6 or n >= 100000
    width = 100000 if six else 10000
    last = 65536 if six else 9999
    prefix, offset = divmod(n, width)
    table = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}.get(prefix)
    if table is None or not 1 <= offset <= last:
        return None
    return table, offset - 1


def _bad_ref(ref: int | str) -> str:
    text = str(ref).strip()
    table = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}.get(text[:1])
    if text.isdigit() and len(text) in (5, 6) and table is not None:
        first = text[0]
        return f"ref {text} is out of range: {table} refs are {first}0001..{first}9999 or {first}00001..{first}65536"
    return f"ref {text!r} is not a Modicon reference (0xxxx coil, 1xxxx discrete, 3xxxx input, 4xxxx holding)"


def endpoint(b: Any, ident: str, e: dict, src: Source) -> Endpoint | None:
    scheme, opts = e["scheme"], e.get("opts") or {}
    where = f"{src.name}:{src.line((ident,))}"
    ok = True
    if scheme == "serial":
        if "port" in e:
            src.error((ident, "port"), f"{ident}: a serial endpoint has no port (host is the device path)")
            ok = False
        for k in ("ca", "client_cert", "client_key"):
            if k in opts:
                src.error((ident, "opts", k), f"{ident}: {k} is for tls+tcp endpoints only")
                ok = False
    else:
        if "port" not in e:
            src.error((ident,), f"{ident}: scheme {scheme} needs a port")
            ok = False
        serial_only = [k for k in ("parity", "stopbits", "bytesize", "rs485", "echo", "halfduplex") if k in opts]
        for k in serial_only:
            src.warn((ident, "opts", k), f"{ident}: {k} only applies to serial lines; ignored for {scheme}")
        if scheme != "tls+tcp":
            for k in ("ca", "client_cert", "client_key"):
                if k in opts:
                    src.error((ident, "opts", k), f"{ident}: {k} is only used by tls+tcp endpoints")
                    ok = False
    tls = None
    if scheme == "tls+tcp":
        if not opts.get("ca"):
            src.error((ident,), f"{ident}: tls+tcp needs opts.ca (Modbus/TCP Security authenticates the server)")
            ok = False
        if bool(opts.get("client_cert")) != bool(opts.get("client_key")):
            src.error((ident, "opts"), f"{ident}: client_cert and client_key go together")
            ok = False
        tls = TlsFiles(*(b._path(opts[k]) if opts.get(k) else None for k in ("ca", "client_cert", "client_key")))
    if "baud" in opts and scheme == "tcp":
        src.warn((ident, "opts", "baud"), f"{ident}: baud is ignored for a Modbus/TCP endpoint")
    ok = positive(src, (ident, "opts", "timeout"), opts.get("timeout"), parse_duration) and ok
    ok = positive(src, (ident, "opts", "rate"), opts.get("rate"), parse_rate) and ok
    if not ok:
        return None
    host = e["host"]
    if scheme == "serial" and not host.startswith("/"):
        host = b._path(host)
    return Endpoint(
        id=ident,
        scheme=scheme,
        host=host,
        port=e.get("port"),
        timeout=parse_duration(opts.get("timeout", "300ms" if scheme == "serial" else "1s")),
        rate=parse_rate(opts["rate"]) if "rate" in opts else None,
        baud=opts.get("baud", 19200),
        parity=opts.get("parity", "E"),
        stopbits=opts.get("stopbits", 1),
        bytesize=opts.get("bytesize", 8),
        halfduplex=opts.get("halfduplex", True),
        rs485=opts.get("rs485", "none"),
        echo=opts.get("echo", False),
        turnaround=parse_duration(opts.get("turnaround", "0ms")),
        tls=tls,
        src=where,
    )


def device(b: Any, ident: str, d: dict, src: Source, endpoints: dict[str, Endpoint], known: dict) -> Driver | None:
    """A `proto: modbus` device; `endpoints` are the Modbus ones built, `known` every endpoints.yml entry."""
    ep = d["endpoint_id"]
    scheme = known[ep].get("scheme") if isinstance(known.get(ep), dict) else None
    if isinstance(scheme, str) and scheme not in SCHEMES:  # an endpoint of another plugin
        what = "is an MQTT broker" if scheme in BROKER_SCHEMES else "is not a Modbus line"
        src.error(
            (ident, "endpoint_id"),
            f"{ident}: proto {d['proto']} needs a Modbus endpoint; {ep} {what} (scheme {scheme})",
        )
    if not b._kind_ok(ident, d, src):
        return None
    ok = True
    if d["endpoint_id"] not in known:
        hint = schema.did_you_mean(d["endpoint_id"], known)
        src.error((ident, "endpoint_id"), f"{ident}: unknown endpoint_id {d['endpoint_id']!r}{hint}")
        ok = False
    build = PROTOCOLS.get(d["proto"])
    if build is None:
        src.error(
            (ident, "proto"),
            f"{ident}: proto {d['proto']!r} is not supported in this release (supported: {', '.join(PROTOCOLS)})",
        )
        return None
    cfg = build(b, ident, d["cfg"], src)
    if not ok or cfg is None or d["endpoint_id"] not in endpoints:
        return None  # a broken endpoint is reported at the endpoint
    return Driver(
        id=ident,
        kind="static",
        endpoint_id=d["endpoint_id"],
        proto=d["proto"],
        modbus=cfg,
        src=f"{src.name}:{src.line((ident,))}",
    )


def modbus_cfg(b: Any, ident: str, c: dict, src: Source) -> ModbusCfg | None:
    if schema.check(src, "drivers", c, schema_ref="modbus", base=(ident, "cfg")):
        return None
    if not positive(src, (ident, "cfg", "polling"), c.get("polling"), parse_duration):
        return None
    return ModbusCfg(
        unit_id=c["unit_id"],
        polling=parse_duration(c.get("polling", "1s")),
        max_regs_per_req=c.get("max_regs_per_req", 120),
        retry=c.get("retry", 3),
        endian=c.get("endian", "big"),
        word_order=c.get("word_order", "big"),
        enable_write=c.get("enable_write", False),
    )


def unique_units(b: Any, drivers: dict[str, Driver], endpoints: dict[str, Endpoint]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for d in drivers.values():
        key = (d.endpoint_id, d.modbus.unit_id)
        if key in seen:
            b.src["drivers"].error(
                (d.id, "cfg", "unit_id"),
                f"{d.id}: unit_id {d.modbus.unit_id} on {d.endpoint_id} is already used by driver {seen[key]}",
            )
        else:
            seen[key] = d.id
        ep = endpoints.get(d.endpoint_id)
        if ep and not ep.is_serial and d.modbus.polling < ep.timeout:
            b.src["drivers"].warn((d.id, "cfg", "polling"), f"{d.id}: polling is shorter than the endpoint timeout")


def tag(b: Any, i: int, v: dict, src: Source, drivers: dict[str, Driver]) -> Variable | None:
    """A variables.yml entry of a Modbus device; `drivers` are the Modbus devices built (a broken one is
    missing: the entry is still checked, but not built)."""
    tag, did = v["tag"], v["driver_id"]
    if not _no_mqtt_keys(i, v, src):
        return None
    if "address" not in v:
        src.error((i,), f"{tag}: missing required key 'address' (driver {did} is a Modbus driver)")
        return None
    if b._generic and schema.check_fragment(src, "variables", _ADDRESS, v["address"], (i, "address")):
        return None  # with a generic plugin installed, variables.json leaves `address` to each driver
    driver = drivers.get(did)
    dt, access = v["datatype"], v.get("access", "R")
    if dt not in MODBUS_DATATYPES:  # float/double/datetime are other drivers' names (OPC UA)
        alias = {"float": "float32", "double": "float64"}.get(dt)
        hint = f"; use {alias}" if alias else ""
        src.error((i, "datatype"), f"{tag}: datatype {dt} is not one a Modbus register holds{hint}")
        return None
    address = build_address(b, i, v, src)
    if address is None:
        return None
    ok = driver is not None  # a broken driver is reported already; still check the tag itself
    regs = DATATYPE_REGS[dt]
    if address.type in BIT_TYPES:
        if dt != "bool":
            src.error((i, "datatype"), f"{tag}: a {address.type} holds one bit; datatype must be bool, not {dt}")
            ok = False
        elif address.len != 1:
            src.error(
                (i, "address", "len"),
                f"{tag}: len {address.len} does not fit bool on a {address.type} (1 bit)",
            )
            ok = False
    elif regs is not None and address.len != regs:
        src.error(
            (i, "address", "len"),
            f"{tag}: len {address.len} does not fit {dt} ({regs} register{'s' if regs > 1 else ''})",
        )
        ok = False
    if address.end > 65536:
        src.error((i, "address"), f"{tag}: address range {address.addr}..{address.end - 1} exceeds 65535")
        ok = False
    writable = "W" in access
    for problem in writes.config_problem(access, address.type, driver):  # the write rules, one home
        src.error((i, "access"), f"{tag}: {problem}")
        ok = False
    scale: Scale | None = None
    if "scale" in v:
        scale, scale_ok = compile_for_tag(src, (i, "scale"), tag, dt, v["scale"])
        ok = ok and scale_ok
        if scale is not None and writable and not scale.invertible:
            src.warn((i, "scale"), f"{tag}: scale is not affine, so writes to this tag will be refused")
    if not ok or driver is None:
        return None
    return Variable(
        tag=tag,
        driver_id=did,
        access=access,
        address=address,
        datatype=dt,
        endian=v.get("endian", driver.modbus.endian),
        word_order=v.get("word_order", driver.modbus.word_order),
        scale=scale,
        unit=v.get("unit"),
        src=f"{src.name}:{src.line((i,))}",
    )


def build_address(b: Any, i: int, v: dict, src: Source) -> Address | None:
    a, tag, dt = v["address"], v["tag"], v["datatype"]
    if "ref" in a:
        if "type" in a or "addr" in a:
            src.error((i, "address"), f"{tag}: give either ref or type+addr, not both")
            return None
        ref = a["ref"]
        text = src.scalar_text((i, "address", "ref"))
        if isinstance(ref, int) and text is not None and text.isdigit() and str(ref) != text.lstrip("0"):
            # YAML 1.1 reads 012345 as octal 5349; a Modicon ref is decimal digits as written.
            src.warn(
                (i, "address", "ref"),
                f"{tag}: YAML reads unquoted ref {text} as the octal number {ref}; "
                f"taken as the Modicon ref {text} — quote it to make that explicit",
            )
            ref = text
        conv = modicon(ref)
        if conv is None:
            src.error((i, "address", "ref"), f"{tag}: {_bad_ref(ref)}")
            return None
        rtype, addr = conv
    else:
        if "type" not in a or "addr" not in a:
            src.error((i, "address"), f"{tag}: address needs type and addr (or a Modicon ref)")
            return None
        rtype, addr = a["type"], a["addr"]
        guess = modicon(addr) if addr >= 10001 else None
        if guess is not None and guess[0] == rtype:
            src.warn(
                (i, "address", "addr"),
                f"{tag}: addr {addr} looks like a Modicon reference; did you mean ref: {addr} "
                f"({rtype} addr {guess[1]})? addr is the 0-based PDU address",
            )
    length = a.get("len")
    if length is None:
        regs = DATATYPE_REGS[dt]
        if regs is None:
            src.error((i, "address"), f"{tag}: datatype {dt} needs address.len (registers)")
            return None
        length = 1 if rtype in BIT_TYPES else regs
    return Address(type=cast(RegType, rtype), addr=addr, len=length)


def overlaps(b: Any, variables: list[Variable], src: Source, index: dict[str, int]) -> None:
    groups: dict[tuple[str, str], list[Variable]] = defaultdict(list)
    for v in variables:
        groups[(v.driver_id, v.address.type)].append(v)
    for vs in groups.values():
        vs.sort(key=lambda v: (v.address.addr, index[v.tag]))
        reach: Variable | None = None
        for v in vs:
            if reach is not None and v.address.addr < reach.address.end:
                later = max(v, reach, key=lambda x: index[x.tag])
                other = reach if later is v else v
                src.error(
                    (index[later.tag], "address"),
                    f"{later.tag}: {later.address.type} {later.address.addr}..{later.address.end - 1} overlaps "
                    f"{other.tag} ({other.address.addr}..{other.address.end - 1}) on driver {v.driver_id}",
                )
            if reach is None or v.address.end > reach.address.end:
                reach = v


def _no_mqtt_keys(i: int, v: dict, src: Source) -> bool:
    """A Modbus tag with the MQTT source's keys (topic/payload) or a tag template: reported here."""
    ok = True
    for k in MQTT_ONLY:
        if k in v:
            src.error((i, k), f"{v['tag']}: {k} is for MQTT source tags; driver {v['driver_id']} is a Modbus driver")
            ok = False
    if "{" in v["tag"] or "}" in v["tag"]:
        src.error((i, "tag"), f"{v['tag']}: placeholders like {{1}} are for MQTT source tags (captured topic levels)")
        ok = False
    return ok


def check(b: Any, built: Built) -> None:
    """The rules across entries: one unit id per line, no overlapping addresses on a device."""
    unique_units(b, built.devices, built.endpoints)
    overlaps(b, built.tags, b.src["variables"], built.index)


# The Modbus `address` as its schema.json ships it: checked here once a generic plugin has made the
# variables.yml `address` free-form.
_ADDRESS = json.loads(resources.files(__package__).joinpath("schema.json").read_text())["variables"]["properties"][
    "address"
]

PROTOCOLS: dict[str, Callable[..., ModbusCfg | None]] = {"modbus": modbus_cfg}
