"""Metrics of Modbus acquisition (SPEC §3)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edge_gateway.metrics import LATENCY_BUCKETS, REGISTRY

PDU = Counter("modbus_pdu", "Modbus transactions", ["driver_id", "func", "result"], registry=REGISTRY)
POINTS = Counter("modbus_point", "Values read and handed to the bus", ["driver_id"], registry=REGISTRY)
DURATION = Histogram(
    "modbus_request_duration_seconds",
    "One Modbus transaction, request to response",
    ["driver_id"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RECONNECT = Counter("modbus_reconnect", "Line or connection reopened", ["endpoint_id"], registry=REGISTRY)
MISMATCH = Counter(
    "modbus_mismatch",
    "Answers rejected because they carry another unit id, function code or MBAP transaction id",
    ["driver_id", "field"],
    registry=REGISTRY,
)
EXCEPTION = Counter(
    "modbus_exception", "Exception replies from devices, by exception code", ["driver_id", "code"], registry=REGISTRY
)
FAULT = Gauge("modbus_fault", "1 while a driver is in Fault (polled with backoff)", ["driver_id"], registry=REGISTRY)
SKIPPED = Counter(
    "modbus_skipped_cycles", "Poll cycles skipped because the bus paused", ["driver_id"], registry=REGISTRY
)
# Per line: `endpoint_id` is the line (one endpoint, one line thread), the same label as modbus_reconnect_total.
LINE_BYTES = Counter(
    "modbus_line_bytes", "Bytes on the wire, direction out or in", ["endpoint_id", "direction"], registry=REGISTRY
)
UTILISATION = Gauge(
    "modbus_line_utilisation_ratio",
    "Share of time (0..1) the line was busy with transactions over the last window",
    ["endpoint_id"],
    registry=REGISTRY,
)
