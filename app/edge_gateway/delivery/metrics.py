"""Metrics of the MQTT 5 uplink and downlink (SPEC §5). Every series carries the connector id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edge_gateway.metrics import LATENCY_BUCKETS, REGISTRY

OUT_BYTES = Counter(
    "connector_out_bytes",
    "Payload bytes handed to the broker (batches, retries included)",
    ["connector"],
    registry=REGISTRY,
)
OUT_FRAMES = Counter(
    "connector_out_frames", "Frames whose batch the broker finally acknowledged", ["connector"], registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "connector_batch_size",
    "Frames per published batch",
    ["connector"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000),
    registry=REGISTRY,
)
RETRY = Counter(
    "connector_retry",
    "Retries: `connect` = a (re)connection attempt after a failure, `publish` = a batch the broker refused",
    ["connector", "what"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "connector_latency_seconds",
    "Publish → final acknowledgement (PUBCOMP for QoS2, PUBACK for QoS1, socket write for QoS0)",
    ["connector"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFLIGHT = Gauge("connector_inflight", "Batches published and not yet acknowledged", ["connector"], registry=REGISTRY)
CONNECTED = Gauge("connector_connected", "1 while the MQTT session is up", ["connector"], registry=REGISTRY)
QOS_DOWNGRADE = Counter(
    "connector_qos_downgrade",
    "Connections on which the broker granted a lower QoS than configured (frames marked dup=possible)",
    ["connector"],
    registry=REGISTRY,
)
CMD = Counter(
    "connector_cmd",
    "Cloud commands by outcome: result ok|fail, reason none|malformed|too_large|unknown_tag|read_only|"
    "write_disabled|invalid_value|out_of_range|expired|retained|unavailable|write_error|timeout|seq_reused|"
    "interrupted|internal; reason duplicate = a replayed seq answered with its first outcome (result), not run",
    ["connector", "result", "reason"],
    registry=REGISTRY,
)
