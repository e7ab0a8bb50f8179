"""The parsed configuration snapshot: the five YAML tables as frozen dataclasses.

A Snapshot is immutable and compared by value, so hot reload can diff two of them
(`edge_gateway.config.diff`) and hand each line only what changed. Units are already
converted: durations in seconds (float), sizes in bytes, rates in requests per second.
`src` fields ("variables.yml:12") point back at the YAML for runtime messages and are
ignored by comparisons.

One set of tables holds every driver plugin's entries (`plugin_endpoints`, `plugin_devices`,
`plugin_tags`), each in the plugin's own frozen model: the built-ins' dataclasses live in their folders
(drivers/modbus/model.py, drivers/mqtt_source/model.py), a generic plugin's are the items of
core/driver.py; config names none of them. A plugin tells its own entries by scheme (endpoints) and
`proto` (devices); every item has `id`/`scheme`, `id`/`proto`/`endpoint_id`, `tag`/`driver_id`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NAMES = ("endpoints", "drivers", "variables", "connector", "gateway")  # the five files, in reading order
FILES = {name: f"{name}.yml" for name in NAMES}


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    max: float = 120.0


@dataclass(frozen=True)
class Connector:
    """One connector.yml entry. kind mqtt5: the MQTT 5 uplink, topic templates keep their {placeholders};
    another kind: the delivery keys the runner reads, and the rest of the entry in `options`."""

    id: str
    kind: str  # mqtt5, or another installed connector (delivery.lookup)
    scheme: Literal["tcp", "tls"] = "tcp"
    host: str = ""
    port: int = 0
    client_id: str = ""
    tenant: str = ""
    device: str = ""
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read at connect time, so a rotated secret needs no reload
    topic: str = "/edge/{tenant}/{device}/{tag}"
    batch_topic: str = "/edge/{tenant}/{device}/batch"
    cmd_topic: str = "/edge/{tenant}/{device}/cmd/{tag}"
    ack_topic: str = "/edge/{tenant}/{device}/ack/{seq}"
    status_topic: str = "/edge/{tenant}/{device}/status"
    qos: Literal[0, 1, 2] = 2
    batch: int = 32
    max_bytes: int = 1 << 20
    max_interval: float = 1.0
    compression: Literal["zstd", "none"] = "zstd"
    keepalive: float = 30.0
    session_expiry: float = 86400.0
    backoff: Backoff = Backoff()
    tls: TlsFiles | None = None
    cmd_max_bytes: int = 64 * 1024  # larger commands are refused (too_large) before they are parsed
    cmd_dedup: int = 4096  # command seqs remembered (across restarts) so a replay is never run twice
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # other kinds: their own keys
    src: str = field(default="", compare=False)


@dataclass(frozen=True)
class BusCfg:
    capacity: int = 65536
    pause_hi: float = 0.8
    resume_lo: float = 0.6


@dataclass(frozen=True)
class WalCfg:
    dir: str = "/var/lib/edge-gateway/wal"
    segment_bytes: int = 16 << 20
    flush_ms: int = 100
    max_bytes: int = 4 << 30
    full_policy: Literal["drop_oldest", "pause"] = "drop_oldest"


@dataclass(frozen=True)
class GatewayCfg:
    bus: BusCfg = BusCfg()
    wal: WalCfg = WalCfg()
    metrics_host: str = "127.0.0.1"  # loopback unless gateway.yml binds elsewhere
    metrics_port: int = 9100
    control_socket: str = "/run/edge-gateway/control.sock"


@dataclass(frozen=True)
class Snapshot:
    """One complete, validated configuration. `revision` is a digest of the five files."""

    connectors: dict[str, Connector]
    gateway: GatewayCfg
    revision: str = field(default="", compare=False)
    directory: str = field(default="", compare=False)
    # Every driver plugin's entries, in file order, typed generically (the plugins' own models).
    plugin_endpoints: dict[str, Any] = field(default_factory=dict)  # endpoints.yml
    plugin_devices: dict[str, Any] = field(default_factory=dict)  # drivers.yml
    plugin_tags: tuple[Any, ...] = ()  # variables.yml
    # Every path the files wrote relative (resolved path → as written): `edge-cfg diff` re-resolves
    # them against the other directory, so two copies of one config in two places compare equal.
    relative_paths: dict[str, str] = field(default_factory=dict, compare=False)

    def devices_on(self, endpoint_id: str) -> tuple[Any, ...]:
        return tuple(d for d in self.plugin_devices.values() if d.endpoint_id == endpoint_id)

    def tags_of(self, device_id: str) -> tuple[Any, ...]:
        return tuple(t for t in self.plugin_tags if t.driver_id == device_id)

    def tag(self, name: str) -> Any | None:
        for t in self.plugin_tags:
            if t.tag == name:
                return t
        return None


STORE_SCHEME = "etcd://"


def is_store_url(config: str) -> bool:
    """`--config etcd://…` names a configuration store, anything else a directory."""
    return config.startswith(STORE_SCHEME)


@dataclass(frozen=True)
class EtcdSourceCfg:
    """A configuration store to run from. TLS and credential fields left None are taken from the
    command line or the environment (EDGE_ETCD_*), as `edge-cfg` takes them."""

    url: str  # etcd://H:P[,H:P…]/PREFIX, {gateway_id} already replaced
    gateway_id: str | None = None  # None: the prefix's last segment
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password_file: str | None = None
    metrics_listen: tuple[str, int] | None = None  # host-local overrides (bootstrap file only)
    control_socket: str | None = None
    origin: str = "--config"  # where it was configured, for messages
