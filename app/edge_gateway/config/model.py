"""The parsed configuration snapshot: the five YAML tables as frozen dataclasses.

A Snapshot is immutable and compared by value, so hot reload can diff two of them
(`edge_gateway.config.diff`) and hand each line only what changed. Units are already
converted: durations in seconds (float), sizes in bytes, rates in requests per second.
`src` fields ("variables.yml:12") point back at the YAML for runtime messages and are
ignored by comparisons.

MQTT-source parts (endpoints of scheme mqtt/mqtts, `proto: mqtt` drivers, topic-mapped tags)
live in their own fields (`mqtt_endpoints`, `mqtt_drivers`, `mqtt_tags`), so code that polls
Modbus never meets an endpoint or a driver it cannot poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edge_gateway.core.datatypes import SIZE_WORDS, Datatype

if TYPE_CHECKING:
    from edge_gateway.config.expr import Scale

Scheme = Literal["tcp", "tls+tcp", "rtu+tcp", "serial"]
RegType = Literal["holding", "input", "coil", "discrete"]
Access = Literal["R", "W", "RW"]
Order = Literal["big", "little"]
# Registers a datatype occupies; None = `len` must be given (string/binary: registers of 2 bytes).
DATATYPE_REGS = SIZE_WORDS
BIT_TYPES = ("coil", "discrete")  # one bit per address, datatype bool only
WORD_TYPES = ("holding", "input")  # 16-bit registers
WRITABLE_TYPES = ("holding", "coil")  # the only tables Modbus can write


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One physical connection, owned by exactly one line thread."""

    id: str
    scheme: Scheme
    host: str  # IP/hostname, or the serial device path for `serial`
    port: int | None = None  # None for `serial`
    timeout: float = 1.0  # response timeout, seconds
    rate: float | None = None  # max requests per second on this line; None = unlimited
    # serial line settings (scheme `serial`; baud also sizes RTU timing for `rtu+tcp`)
    baud: int = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: int = 1
    bytesize: int = 8
    halfduplex: bool = True
    rs485: Literal["none", "kernel", "rts"] = "none"
    echo: bool = False
    turnaround: float = 0.0  # extra quiet time before the next request, seconds
    tls: TlsFiles | None = None  # `tls+tcp` only
    src: str = field(default="", compare=False)

    @property
    def is_serial(self) -> bool:
        return self.scheme == "serial"

    @property
    def rtu_framing(self) -> bool:
        """RTU frames (CRC, silent intervals) rather than the MBAP header of Modbus/TCP."""
        return self.scheme in ("serial", "rtu+tcp")


@dataclass(frozen=True)
class ModbusCfg:
    unit_id: int
    polling: float  # seconds between polls of this unit
    max_regs_per_req: int = 120
    retry: int = 3
    endian: Order = "big"  # byte order inside a register
    word_order: Order = "big"  # register order of 32/64-bit values
    enable_write: bool = False


@dataclass(frozen=True)
class Driver:
    """One device (unit) on an endpoint. Several drivers may share one serial endpoint."""

    id: str
    kind: Literal["static"]
    endpoint_id: str
    proto: Literal["modbus"]
    modbus: ModbusCfg
    src: str = field(default="", compare=False)


@dataclass(frozen=True)
class Address:
    type: RegType
    addr: int  # 0-based PDU address
    len: int  # registers (word types) or bits (bit types)

    @property
    def end(self) -> int:
        """One past the last address used."""
        return self.addr + self.len


@dataclass(frozen=True)
class Variable:
    tag: str
    driver_id: str
    access: Access
    address: Address
    datatype: Datatype
    endian: Order  # resolved: the variable's override or its driver's
    word_order: Order
    scale: Scale | None = None  # compiled once at load; compares by its source text
    unit: str | None = None
    src: str = field(default="", compare=False)

    @property
    def readable(self) -> bool:
        return "R" in self.access

    @property
    def writable(self) -> bool:
        return "W" in self.access


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
class MqttEndpoint:
    """A local MQTT broker the gateway subscribes to (endpoints.yml, scheme mqtt | mqtts).
    One client thread and one persistent session per endpoint, shared by its drivers."""

    id: str
    scheme: Literal["mqtt", "mqtts"]
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read at connect time, so a rotated secret needs no reload
    keepalive: float = 30.0
    session_expiry: float = 3600.0  # the broker queues QoS 1/2 messages this long while we are away
    backoff: Backoff = Backoff(0.5, 30.0)
    tls: TlsFiles | None = None  # mqtts only
    src: str = field(default="", compare=False)


@dataclass(frozen=True)
class Subscription:
    filter: str  # an MQTT topic filter, + and # allowed
    qos: Literal[0, 1, 2] = 1


@dataclass(frozen=True)
class MqttSourceCfg:
    subscriptions: tuple[Subscription, ...]
    retained: Literal["take", "ignore"] = "take"  # the broker's stored value at subscribe time
    queue: int = 1000  # messages held between paho's thread and the bus; beyond it they are dropped
    recover: float = 5.0  # seconds without a drop (and an empty queue) before degraded → ok


@dataclass(frozen=True)
class MqttDriver:
    """A `proto: mqtt` driver: subscriptions on an MQTT endpoint whose messages become tags."""

    id: str
    kind: Literal["static"]
    endpoint_id: str
    proto: Literal["mqtt"]
    cfg: MqttSourceCfg
    src: str = field(default="", compare=False)


PayloadFormat = Literal["number", "json", "bytes", "string"]


@dataclass(frozen=True)
class Payload:
    format: PayloadFormat = "number"
    pointer: str = ""  # RFC 6901 JSON pointer into a json payload; "" = the whole document
    endian: Order = "big"  # byte order of a numeric `bytes` payload


@dataclass(frozen=True)
class MqttTag:
    """variables.yml entry of an MQTT driver: a topic (exact, or a filter whose + / # levels are
    captured as {1}, {2}, … in `tag`) and how its payload becomes the value."""

    tag: str  # a tag name, or a template with {1}, {2}, …
    driver_id: str
    topic: str
    payload: Payload
    datatype: Datatype
    scale: Scale | None = None
    unit: str | None = None
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

    endpoints: dict[str, Endpoint]
    drivers: dict[str, Driver]
    variables: tuple[Variable, ...]
    connectors: dict[str, Connector]
    gateway: GatewayCfg
    revision: str = field(default="", compare=False)
    directory: str = field(default="", compare=False)
    mqtt_endpoints: dict[str, MqttEndpoint] = field(default_factory=dict)
    mqtt_drivers: dict[str, MqttDriver] = field(default_factory=dict)
    mqtt_tags: tuple[MqttTag, ...] = ()
    # Plugins on the generic tables (core/driver.py BaseDriver): EndpointItem, DeviceItem, TagItem.
    plugin_endpoints: dict[str, Any] = field(default_factory=dict)
    plugin_devices: dict[str, Any] = field(default_factory=dict)
    plugin_tags: tuple[Any, ...] = ()
    # Every path the files wrote relative (resolved path → as written): `edge-cfg diff` re-resolves
    # them against the other directory, so two copies of one config in two places compare equal.
    relative_paths: dict[str, str] = field(default_factory=dict, compare=False)

    def mqtt_tags_of(self, driver_id: str) -> tuple[MqttTag, ...]:
        return tuple(t for t in self.mqtt_tags if t.driver_id == driver_id)

    def mqtt_drivers_on(self, endpoint_id: str) -> tuple[MqttDriver, ...]:
        return tuple(d for d in self.mqtt_drivers.values() if d.endpoint_id == endpoint_id)

    def variables_of(self, driver_id: str) -> tuple[Variable, ...]:
        return tuple(v for v in self.variables if v.driver_id == driver_id)

    def drivers_on(self, endpoint_id: str) -> tuple[Driver, ...]:
        return tuple(d for d in self.drivers.values() if d.endpoint_id == endpoint_id)

    def variable(self, tag: str) -> Variable | None:
        for v in self.variables:
            if v.tag == tag:
                return v
        return None
