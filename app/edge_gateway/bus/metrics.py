"""Metrics of the frame bus and the WAL (SPEC §4)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edge_gateway.metrics import LATENCY_BUCKETS, REGISTRY

RING_USED = Gauge("framebus_ring_used", "Frames waiting in the in-memory bus", registry=REGISTRY)
PUBLISH = Counter("framebus_publish", "Frames accepted by the bus", ["kind"], registry=REGISTRY)
DROP = Counter(
    "framebus_drop", "Frames lost, by reason (ring_full, wal_full, corrupt, wal_error)", ["reason"], registry=REGISTRY
)
FLOW = Counter("framebus_flow", "Pause/Resume signals sent to producers", ["signal"], registry=REGISTRY)
WAL_BYTES = Gauge("framebus_wal_bytes", "Bytes of segment files in the WAL", registry=REGISTRY)
WAL_SEGMENTS = Gauge("framebus_wal_segments", "Segment files in the WAL", registry=REGISTRY)
BACKLOG = Gauge("framebus_backlog_lag", "Committed frames a consumer has not acked", ["consumer"], registry=REGISTRY)
FSYNC = Histogram(
    "framebus_wal_fsync_seconds",
    "Duration of one group commit (write + fsync)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CORRUPT = Counter("framebus_wal_corrupt_records", "Damaged WAL stretches found and skipped", registry=REGISTRY)
CORRUPT_BYTES = Counter("framebus_wal_corrupt_bytes", "Bytes of damaged WAL stretches skipped", registry=REGISTRY)
FAULT = Gauge(
    "framebus_wal_fault", "1 while WAL writes fail, by errno (enospc, eio, ...)", ["reason"], registry=REGISTRY
)
WRITE_ERRORS = Counter(
    "framebus_wal_write_errors", "Failed WAL commits (write or fsync), by errno", ["reason"], registry=REGISTRY
)
TRUNCATED = Counter("framebus_wal_truncated_bytes", "Bytes of torn tail cut off on open", registry=REGISTRY)
COMMITTED = Gauge("framebus_committed_seq", "Highest seq durable in the WAL", registry=REGISTRY)
