"""Where a gateway's configuration comes from: a directory of five files (the default), or a
configuration store named by an `etcd://` URL or by a bootstrap directory.

    edge-gateway run --config DIR                             the five files in DIR (unchanged)
    edge-gateway run --config etcd://H:P[,H:P…]/PREFIX        etcd; gateway id = PREFIX's last segment
    edge-gateway run --config DIR   with DIR/gateway.yml:     etcd, configured in a file:

        config_source:
          etcd:
            endpoints: [10.0.0.5:2379, 10.0.0.6:2379, 10.0.0.7:2379]
            prefix: /edge/config/v1/{gateway_id}     # {gateway_id} is replaced by gateway_id
            gateway_id: press-04                     # default: the prefix's last segment
            ca: /etc/edge-gateway/etcd/ca.pem        # TLS: CA, client certificate and key
            cert: /etc/edge-gateway/etcd/gw.crt
            key: /etc/edge-gateway/etcd/gw.key
            username: press-04                       # etcd RBAC user ...
            password_file: /etc/edge-gateway/etcd/password   # ... and its password, never in the file
        metrics: { listen: 127.0.0.1:9108 }          # host-local: wins over the fleet's gateway.yml
        control: { socket: /run/edge-gateway/control.sock }

A gateway.yml with `config_source` is a bootstrap file: it holds nothing else than the block and the
two host-local settings (a fleet shares one configuration, but two gateways on one host cannot share a
port or a socket); the five tables come from the store. Relative paths in it are relative to DIR.
Problems are `file:line: message`, as the loader reports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_gateway.config import schema
from edge_gateway.config.model import STORE_SCHEME, EtcdSourceCfg, is_store_url
from edge_gateway.config.problems import ConfigError
from edge_gateway.config.source import Source, read, secret_file

PLACEHOLDER = "{gateway_id}"

_ADDR = "^[^\\s,/]+:[0-9]{1,5}$"
_PATH = {"type": "string", "minLength": 1}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["config_source"],
    "properties": {
        "config_source": {
            "type": "object",
            "additionalProperties": False,
            "required": ["etcd"],
            "properties": {
                "etcd": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["endpoints", "prefix"],
                    "properties": {
                        "endpoints": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": _ADDR},
                        },
                        "prefix": {"type": "string", "pattern": "^/[^\\s]*[^/\\s]$"},
                        "gateway_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"},
                        "ca": _PATH,
                        "cert": _PATH,
                        "key": _PATH,
                        "username": {"type": "string", "minLength": 1},
                        "password_file": _PATH,
                    },
                }
            },
        },
        "metrics": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"listen": {"type": "string", "pattern": _ADDR}},
        },
        "control": {"type": "object", "additionalProperties": False, "properties": {"socket": _PATH}},
    },
}


def resolve(config: str) -> EtcdSourceCfg | None:
    """The store `--config` names, or None for a plain config directory; ConfigError with `file:line`
    problems for a bootstrap file that is wrong."""
    if is_store_url(config):
        return EtcdSourceCfg(url=config)
    gw = Path(config) / "gateway.yml"
    if not gw.is_file():
        return None
    src = read(gw, str(gw))
    if not isinstance(src.data, dict) or "config_source" not in src.data:
        return None  # the five-file directory (or a broken gateway.yml, which the loader reports)
    return _from_file(Path(config), src)


def _from_file(directory: Path, src: Source) -> EtcdSourceCfg:
    data = src.data
    schema.check_with(src, SCHEMA, data)
    if src.problems:
        raise ConfigError(src.problems)
    etcd = data["config_source"]["etcd"]
    prefix, gw_id = etcd["prefix"], etcd.get("gateway_id")
    if PLACEHOLDER in prefix:
        if gw_id is None:
            src.error(("config_source", "etcd", "prefix"), f"config_source.etcd.prefix: {PLACEHOLDER} needs gateway_id")
        else:
            prefix = prefix.replace(PLACEHOLDER, gw_id)
    elif "{" in prefix or "}" in prefix:
        src.error(("config_source", "etcd", "prefix"), f"config_source.etcd.prefix: only {PLACEHOLDER} is replaced")

    def path(key: str) -> str | None:
        value = etcd.get(key)
        return None if value is None else str((directory / value).resolve())

    if etcd.get("password_file") is not None:
        secret_file(src, ("config_source", "etcd", "password_file"), path("password_file") or "")
    for key in ("ca", "cert", "key"):
        p = path(key)
        if p is not None and not Path(p).is_file():
            src.error(("config_source", "etcd", key), f"config_source.etcd.{key}: {p} does not exist")
    if ("cert" in etcd) != ("key" in etcd):
        src.error(("config_source", "etcd"), "config_source.etcd: cert and key go together")
    listen = None
    if "listen" in (data.get("metrics") or {}):
        host, _, port = data["metrics"]["listen"].rpartition(":")
        if not 1 <= int(port) <= 65535:
            src.error(("metrics", "listen"), f"metrics.listen: port {port} out of range 1..65535")
        listen = (host.strip("[]"), int(port))
    sock = (data.get("control") or {}).get("socket")
    if src.problems:
        raise ConfigError(src.problems)
    line = src.line(("config_source",), key=True)
    return EtcdSourceCfg(
        url=STORE_SCHEME + ",".join(etcd["endpoints"]) + prefix,
        gateway_id=gw_id,
        ca=path("ca"),
        cert=path("cert"),
        key=path("key"),
        username=etcd.get("username"),
        password_file=path("password_file"),
        metrics_listen=listen,
        control_socket=str((directory / sock).resolve()) if sock else None,
        origin=f"{src.name}:{line}",
    )
