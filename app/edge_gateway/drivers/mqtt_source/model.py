"""The MQTT-source parts of the snapshot as frozen dataclasses: endpoints of scheme mqtt | mqtts,
`proto: mqtt` drivers and topic-mapped tags. Built by drivers/mqtt_source/config.py, held by the
generic Snapshot (config/model.py) in its `plugin_endpoints`, `plugin_devices` and `plugin_tags` tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from edge_gateway.config.model import Backoff, TlsFiles
from edge_gateway.core.datatypes import Datatype

if TYPE_CHECKING:
    from edge_gateway.config.expr import Scale

Order = Literal["big", "little"]


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
