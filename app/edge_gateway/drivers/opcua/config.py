"""The OPC UA plugin's frozen model: endpoint options, device cfg, tag address, and the NodeId parser
(every form: i= s= g= b=, with ns= or nsu=; an nsu= namespace URI is resolved at connect)."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# datatype → the Python type a value of it has (frames and commands); the OPC UA names alias ours.
ALIASES = {"float": "float32", "double": "float64"}
SUPPORTED = frozenset(
    {"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "float", "double",
     "string", "binary", "datetime"}
)  # fmt: skip

_NODE = re.compile(r"^(?:(?:ns=(?P<ns>\d+)|nsu=(?P<nsu>[^;]+));)?(?P<kind>[isgb])=(?P<ident>.+)$", re.S)


@dataclass(frozen=True)
class NodeRef:
    """A parsed NodeId: `ns` (or the namespace URI `nsu`, resolved at connect), its kind and identifier."""

    text: str
    ns: int
    nsu: str | None
    kind: str  # i s g b
    ident: int | str | bytes


def parse_node(text: str) -> NodeRef:
    m = _NODE.match(text.strip())
    if m is None:
        raise ValueError(
            f"node {text!r} is not a NodeId (ns=2;s=Temp, i=2258, ns=1;g=<uuid>, ns=1;b=<base64>, nsu=URI;s=…)"
        )
    kind, raw = m["kind"], m["ident"]
    ident: int | str | bytes = raw
    if kind == "i":
        if not raw.isdigit() or int(raw) > 0xFFFF_FFFF:
            raise ValueError(f"node {text!r}: i= takes an unsigned 32-bit integer")
        ident = int(raw)
    elif kind == "g":
        try:
            uuid.UUID(raw)
        except ValueError:
            raise ValueError(f"node {text!r}: g= takes a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)") from None
    elif kind == "b":
        try:
            ident = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ValueError(f"node {text!r}: b= takes base64 bytes") from None
    ns = int(m["ns"]) if m["ns"] else 0
    if ns > 0xFFFF:
        raise ValueError(f"node {text!r}: ns must be 0..65535")
    return NodeRef(text.strip(), ns, m["nsu"], kind, ident)


@dataclass(frozen=True)
class OpcuaEndpoint:
    security_policy: str = "None"
    security_mode: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password_file: str | None = None
    timeout: float = 4.0


@dataclass(frozen=True)
class Subscription:
    node: NodeRef
    sample: int | None = None  # ms; None = the publishing interval


@dataclass(frozen=True)
class OpcuaDevice:
    session_timeout: int = 60_000
    polling: int = 1_000
    subscriptions: tuple[Subscription, ...] = ()
    publishing_interval: int = 500
    max_nodes_per_read: int = 100
    enable_write: bool = False


@dataclass(frozen=True)
class OpcuaAddress:
    node: NodeRef


def build_endpoint(opts: Mapping[str, Any]) -> OpcuaEndpoint:
    ep = OpcuaEndpoint(**{k: v for k, v in opts.items()})
    secure = ep.security_policy != "None"
    if secure and (ep.certificate is None or ep.private_key is None):
        raise ValueError(f"security_policy {ep.security_policy} needs certificate and private_key")
    if secure and ep.security_mode is None:
        raise ValueError(f"security_policy {ep.security_policy} needs security_mode (Sign or SignAndEncrypt)")
    if not secure and ep.security_mode is not None:
        raise ValueError("security_mode needs a security_policy other than None")
    if (ep.username is None) != (ep.password_file is None):
        raise ValueError("username and password_file go together")
    return ep


def build_cfg(cfg: Mapping[str, Any]) -> OpcuaDevice:
    subs = tuple(Subscription(parse_node(s["node"]), s.get("sample")) for s in cfg.get("subscriptions", ()))
    seen: set[str] = set()
    for s in subs:
        if s.node.text in seen:
            raise ValueError(f"subscriptions: node {s.node.text} is listed twice")
        seen.add(s.node.text)
    rest = {k: v for k, v in cfg.items() if k != "subscriptions"}
    return OpcuaDevice(subscriptions=subs, **rest)


def build_address(datatype: str, address: Mapping[str, Any]) -> OpcuaAddress:
    if datatype not in SUPPORTED:
        raise ValueError(f"datatype {datatype} is not an OPC UA datatype ({', '.join(sorted(SUPPORTED))})")
    return OpcuaAddress(parse_node(address["node"]))
