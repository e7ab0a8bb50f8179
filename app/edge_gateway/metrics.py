"""One Prometheus registry for the whole process.

Every subsystem declares its metrics in its own `metrics.py` against `REGISTRY`, so names
stay next to the code that moves them and a duplicate name fails at import.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["REGISTRY", "CollectorRegistry", "LATENCY_BUCKETS", "value"]

# Sub-millisecond to tens of seconds: Modbus transactions on RS-485 and MQTT round trips both fit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample (0.0 when it does not exist yet); for status lines and tests."""
    v = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if v is None else v
