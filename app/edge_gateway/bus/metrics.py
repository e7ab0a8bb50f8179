"""Metrics of the frame bus and the WAL (SPEC §4)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from edge_gateway.metrics import REGISTRY

RING_USED = Gauge("framebus_ring_used", "Frames waiting in the in-memory bus", registry=REGISTRY)
PUBLISH = Counter("framebus_publish", "Frames accepted by the bus", ["kind"], registry=REGISTRY)
DROP = Counter("framebus_drop", "Frames lost, by reason (ring_full, wal_full, corrupt)", ["reason"], registry=REGISTRY)
FLOW = Counter("framebus_flow", "Pause/Resume signals sent to producers", ["signal"], registry=REGISTRY)
