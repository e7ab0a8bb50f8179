"""Metrics of the MQTT source: what arrived, what could not be used, what was dropped, and why."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from edge_gateway.metrics import REGISTRY

RECEIVED = Counter(
    "mqtt_source_received",
    "Messages received from the source broker, per subscription",
    ["driver_id", "subscription"],
    registry=REGISTRY,
)
FRAMES = Counter("mqtt_source_frames", "Frames handed to the bus", ["driver_id"], registry=REGISTRY)
MALFORMED = Counter(
    "mqtt_source_malformed",
    "Payloads that did not become a value (a bad-quality frame was sent instead), by reason",
    ["driver_id", "reason"],
    registry=REGISTRY,
)
UNMAPPED = Counter(
    "mqtt_source_unmapped",
    "Messages on a subscribed topic that no variable maps",
    ["driver_id"],
    registry=REGISTRY,
)
RETAINED_IGNORED = Counter(
    "mqtt_source_retained_ignored",
    "Retained messages skipped because the driver has retained: ignore",
    ["driver_id"],
    registry=REGISTRY,
)
DROP = Counter(
    "mqtt_source_drop",
    "Messages dropped because the hand-off queue was full (bus paused or slow), per subscription",
    ["driver_id", "subscription"],
    registry=REGISTRY,
)
QUEUED = Gauge("mqtt_source_queue_used", "Messages waiting for the bus", ["driver_id"], registry=REGISTRY)
HEALTH = Gauge("mqtt_source_health", "0 ok, 1 degraded, 2 down", ["driver_id"], registry=REGISTRY)
CONNECTED = Gauge("mqtt_source_connected", "1 while connected to the source broker", ["endpoint_id"], registry=REGISTRY)
RECONNECTS = Counter(
    "mqtt_source_reconnect", "Connection attempts after a failure or a lost link", ["endpoint_id"], registry=REGISTRY
)
STRAY = Counter(
    "mqtt_source_stray",
    "Messages matching no subscription of this client (e.g. left in the broker's session)",
    ["endpoint_id"],
    registry=REGISTRY,
)
