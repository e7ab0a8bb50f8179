"""The MQTT-source parts of a configuration: mqtt/mqtts endpoints, `proto: mqtt` drivers and
topic-mapped tags in variables.yml.

The loader reaches these through the registry (`PLUGIN.config`: `endpoint`, `device`, `tag` for each
entry the plugin owns, `check` for the rules across entries), passing itself as `b` (its sources, path
resolution and kind rules). The rules about topic filters, tag templates and JSON pointers
come from the source itself (`drivers.mqtt_source`), so lint and the running driver agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from edge_gateway.config import schema
from edge_gateway.config.expr import Scale, compile_for_tag
from edge_gateway.config.model import Backoff, TlsFiles
from edge_gateway.config.source import Source, secret_file
from edge_gateway.config.units import parse_duration
from edge_gateway.core.driver import Built
from edge_gateway.drivers.mqtt_source import topics
from edge_gateway.drivers.mqtt_source.mapping import PLACEHOLDER, Template, TemplateError
from edge_gateway.drivers.mqtt_source.model import (
    MqttDriver,
    MqttEndpoint,
    MqttSourceCfg,
    MqttTag,
    Payload,
    Subscription,
)
from edge_gateway.drivers.mqtt_source.payload import FORMAT_DATATYPES, PointerError, parse_pointer

SCHEMES = ("mqtt", "mqtts")

TLS_KEYS = ("ca", "client_cert", "client_key")
MODBUS_ONLY = ("address", "endian", "word_order")


# -- endpoints.yml ------------------------------------------------------------------------------------
def endpoint(b: Any, ident: str, e: dict[str, Any], src: Source) -> MqttEndpoint | None:
    path: Callable[[str], str] = b._path
    scheme, opts = e["scheme"], e.get("opts") or {}
    ok = True
    tls = None
    if scheme == "mqtt":
        for k in TLS_KEYS:
            if k in opts:
                src.error((ident, "opts", k), f"{ident}: {k} needs scheme mqtts (TLS)")
                ok = False
    else:
        if bool(opts.get("client_cert")) != bool(opts.get("client_key")):
            src.error((ident, "opts"), f"{ident}: client_cert and client_key go together")
            ok = False
        tls = TlsFiles(*(path(opts[k]) if opts.get(k) else None for k in TLS_KEYS))
        if not opts.get("ca"):
            src.warn((ident,), f"{ident}: mqtts without opts.ca trusts the system's CA store")
    if "password" in opts and "password_file" in opts:
        src.error((ident, "opts", "password_file"), f"{ident}: give password or password_file, not both")
        ok = False
    if "password_file" in opts:
        ok = secret_file(src, (ident, "opts", "password_file"), path(opts["password_file"])) and ok
    keepalive = parse_duration(opts.get("keepalive", "30s"))
    if not 1 <= keepalive <= 65535:
        src.error((ident, "opts", "keepalive"), f"{ident}: keepalive must be 1s..65535s (MQTT's 16-bit field)")
        ok = False
    expiry = parse_duration(opts.get("session_expiry", "1h"))
    if expiry > 0xFFFF_FFFE:
        src.error((ident, "opts", "session_expiry"), f"{ident}: session_expiry is at most 4294967294s")
        ok = False
    elif expiry < 1:
        src.warn(
            (ident, "opts", "session_expiry"),
            f"{ident}: session_expiry below 1s: the broker forgets the session (and the messages it queued "
            "for us) at every disconnect",
        )
    bk_cfg = opts.get("backoff") or {}
    backoff = Backoff(parse_duration(bk_cfg.get("base", "500ms")), parse_duration(bk_cfg.get("max", "30s")))
    if backoff.base > backoff.max:
        src.error((ident, "opts", "backoff"), f"{ident}: backoff.base is larger than backoff.max")
        ok = False
    if "client_id" not in opts:
        src.warn(
            (ident,),
            f"{ident}: no opts.client_id; the default edge-gateway.{ident} would clash with another gateway "
            "on the same broker (each takes over the other's session)",
        )
    if not ok:
        return None
    return MqttEndpoint(
        id=ident,
        scheme=scheme,
        host=e["host"],
        port=e.get("port", 8883 if scheme == "mqtts" else 1883),
        client_id=opts.get("client_id", f"edge-gateway.{ident}"),
        username=opts.get("username"),
        password=opts.get("password"),
        password_file=path(opts["password_file"]) if "password_file" in opts else None,
        keepalive=keepalive,
        session_expiry=expiry,
        backoff=backoff,
        tls=tls,
        src=f"{src.name}:{src.line((ident,))}",
    )


# -- drivers.yml --------------------------------------------------------------------------------------
def device(
    b: Any, ident: str, d: dict, src: Source, endpoints: dict[str, MqttEndpoint], known: dict
) -> MqttDriver | None:
    """A `proto: mqtt` device: an MQTT source on an mqtt/mqtts endpoint; `endpoints` are the MQTT ones
    built, `known` every endpoints.yml entry."""
    if not b._kind_ok(ident, d, src):
        return None
    ok = True
    ep = d["endpoint_id"]
    if ep not in known:
        src.error((ident, "endpoint_id"), f"{ident}: unknown endpoint_id {ep!r}{schema.did_you_mean(ep, known)}")
        ok = False
    elif isinstance(known[ep], dict) and known[ep].get("scheme") not in SCHEMES:
        src.error(
            (ident, "endpoint_id"),
            f"{ident}: proto mqtt needs an mqtt or mqtts endpoint; {ep} has scheme {known[ep].get('scheme')}",
        )
        ok = False
    if schema.check(src, "drivers", d["cfg"], schema_ref="mqtt", base=(ident, "cfg")):
        return None
    cfg = driver_cfg(ident, d["cfg"], src)
    if not ok or cfg is None or ep not in endpoints:
        return None  # a broken endpoint is reported at the endpoint
    return driver(ident, d, cfg, src)


def driver_cfg(ident: str, c: dict[str, Any], src: Source) -> MqttSourceCfg | None:
    """`cfg:` of a `proto: mqtt` driver (already checked against drivers.json $defs/mqtt)."""
    ok = True
    subs: list[Subscription] = []
    seen: dict[str, int] = {}
    for k, s in enumerate(c["subscriptions"]):
        where = (ident, "cfg", "subscriptions", k, "filter")
        try:
            topics.check_filter(s["filter"])
        except topics.FilterError as e:
            src.error(where, f"{ident}: subscription {s['filter']!r}: {e}")
            ok = False
            continue
        if s["filter"] in seen:
            src.error(
                where, f"{ident}: subscription {s['filter']!r} is listed twice (first at line {seen[s['filter']]})"
            )
            ok = False
            continue
        seen[s["filter"]] = src.line(where)
        subs.append(Subscription(s["filter"], s.get("qos", 1)))
    if not ok:
        return None
    return MqttSourceCfg(
        subscriptions=tuple(subs),
        retained=c.get("retained", "take"),
        queue=c.get("queue", 1000),
        recover=parse_duration(c.get("recover", "5s")),
    )


def driver(ident: str, d: dict[str, Any], cfg: MqttSourceCfg, src: Source) -> MqttDriver:
    return MqttDriver(
        id=ident,
        kind="static",
        endpoint_id=d["endpoint_id"],
        proto="mqtt",
        cfg=cfg,
        src=f"{src.name}:{src.line((ident,))}",
    )


def overlapping_subscriptions(drivers: Iterable[MqttDriver], src: Source) -> None:
    """The broker sends one copy per matching subscription: overlapping filters on one endpoint
    turn one message into two frames (or the same tag twice)."""
    by_endpoint: dict[str, list[tuple[MqttDriver, int, Subscription]]] = {}
    for d in drivers:
        for k, s in enumerate(d.cfg.subscriptions):
            by_endpoint.setdefault(d.endpoint_id, []).append((d, k, s))
    for subs in by_endpoint.values():
        for j, (d, k, s) in enumerate(subs):
            for d0, _, s0 in subs[:j]:
                if topics.overlaps(topics.levels(s0.filter), topics.levels(s.filter)):
                    other = f"{s0.filter!r}" + ("" if d0 is d else f" of driver {d0.id}")
                    src.warn(
                        (d.id, "cfg", "subscriptions", k, "filter"),
                        f"{d.id}: subscription {s.filter!r} overlaps {other}: a message matching both "
                        "arrives once per subscription",
                    )
                    break


# -- variables.yml ------------------------------------------------------------------------------------
def tag(b: Any, i: int, v: dict[str, Any], src: Source, drivers: dict[str, MqttDriver]) -> MqttTag | None:
    """A variables.yml entry whose driver is an MQTT source. When that driver is itself broken
    (already reported, not in `drivers`), the entry is still checked, but not built."""
    name, did = v["tag"], v["driver_id"]
    drv = drivers.get(did)
    ok = True
    for k in MODBUS_ONLY:
        if k in v:
            src.error((i, k), f"{name}: {k} is for Modbus tags; driver {did} is an MQTT source (use topic/payload)")
            ok = False
    if "topic" not in v:
        src.error((i,), f"{name}: driver {did} is an MQTT source: the tag needs a topic")
        return None
    if v.get("access", "R") != "R":
        src.error((i, "access"), f"{name}: MQTT source tags are read-only (access: R)")
        ok = False
    topic, dt = v["topic"], v["datatype"]
    try:
        filt = topics.check_filter(topic)
    except topics.FilterError as e:
        src.error((i, "topic"), f"{name}: topic {topic!r}: {e}")
        return None
    try:
        Template.parse(name, topics.wildcards(filt))
    except TemplateError as e:
        src.error((i, "tag"), f"{name}: {e}")
        ok = False
    p = v.get("payload") or {}
    fmt = p.get("format", "number")
    if "pointer" in p:
        if fmt != "json":
            src.error((i, "payload", "pointer"), f"{name}: a pointer needs payload format json, not {fmt}")
            ok = False
        try:
            parse_pointer(p["pointer"])
        except PointerError as e:
            src.error((i, "payload", "pointer"), f"{name}: {e}")
            ok = False
    if "endian" in p and fmt != "bytes":
        src.error((i, "payload", "endian"), f"{name}: endian applies to payload format bytes only")
        ok = False
    if dt not in FORMAT_DATATYPES[fmt]:
        allowed = ", ".join(sorted(FORMAT_DATATYPES[fmt]))
        src.error((i, "datatype"), f"{name}: a {fmt} payload cannot give {dt} (possible: {allowed})")
        ok = False
    scale: Scale | None = None
    if "scale" in v:
        scale, scale_ok = compile_for_tag(src, (i, "scale"), name, dt, v["scale"])
        ok = ok and scale_ok
    if drv is not None:
        ok = _delivered(i, name, filt, drv, src) and ok
    if not ok or drv is None:
        return None
    return MqttTag(
        tag=name,
        driver_id=did,
        topic=topic,
        payload=Payload(fmt, p.get("pointer", ""), p.get("endian", "big")),
        datatype=dt,
        scale=scale,
        unit=v.get("unit"),
        src=f"{src.name}:{src.line((i,))}",
    )


def _delivered(i: int, name: str, filt: topics.Levels, drv: MqttDriver, src: Source) -> bool:
    """The driver's subscriptions must deliver this topic: an error when none can, a warning
    when they deliver only part of what a pattern names."""
    subs = [topics.levels(s.filter) for s in drv.cfg.subscriptions]
    if any(topics.covers(s, filt) for s in subs):
        return True
    topic = "/".join(filt)
    if any(topics.overlaps(s, filt) for s in subs):
        src.warn((i, "topic"), f"{name}: the subscriptions of {drv.id} deliver only part of {topic!r}")
        return True
    have = ", ".join(repr(s.filter) for s in drv.cfg.subscriptions)
    src.error((i, "topic"), f"{name}: no subscription of driver {drv.id} delivers {topic!r} (it has {have})")
    return False


def check(b: Any, built: Built) -> None:
    """The rules across entries: overlapping subscriptions on one broker, tag templates that can produce
    another configured tag."""
    overlapping_subscriptions(built.devices.values(), b.src["drivers"])
    template_shadows(built.tags, built.names, b.src["variables"], built.index)


def template_shadows(tags: Iterable[MqttTag], names: dict[str, int], src: Source, index: dict[str, int]) -> None:
    """Warn when a tag template can produce a tag that is also configured elsewhere: the two would
    write the same tag with unrelated values. An exact topic of the same driver that the pattern
    covers is the intended override (exact beats pattern), not a clash."""
    tags = list(tags)
    by_name = {t.tag: t for t in tags}
    for t in tags:
        if not PLACEHOLDER.search(t.tag):
            continue
        rx = re.compile("^" + _template_regex(t.tag) + "$")
        for other, line in names.items():
            if other == t.tag or not rx.match(other):
                continue
            o = by_name.get(other)
            if (
                o is not None
                and o.driver_id == t.driver_id
                and topics.covers(topics.levels(t.topic), topics.levels(o.topic))
            ):
                continue
            src.warn((index[t.tag], "tag"), f"{t.tag}: can produce {other!r}, which is also a tag (line {line})")


def _template_regex(template: str) -> str:
    out, pos = [], 0
    for m in PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(r"[A-Za-z0-9_.:-]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return "".join(out)
