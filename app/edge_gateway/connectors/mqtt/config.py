"""connector.yml `kind: mqtt5` → config.model.Connector: the MQTT 5 connector's builder, which the
loader reaches through the registry (`PLUGIN.build`), passing itself as `b` (its path resolution)."""

from __future__ import annotations

import re
from typing import Any, Literal

from edge_gateway.config.model import Backoff, Connector, TlsFiles
from edge_gateway.config.source import Source, positive, secret_file
from edge_gateway.config.units import parse_duration, parse_size

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def build(b: Any, ident: str, c: dict, src: Source) -> Connector | None:
    """A `kind: mqtt5` entry (already checked against schema.json) → the Connector model, with the rules
    a schema cannot say (port range, password or password_file, TLS files, topic placeholders)."""
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
        ok = secret_file(src, (ident, "password_file"), b._path(c["password_file"])) and ok
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
        TlsFiles(*(b._path(tls_cfg[k]) if tls_cfg.get(k) else None for k in ("ca", "client_cert", "client_key")))
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
        password_file=b._path(c["password_file"]) if "password_file" in c else None,
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
