"""Metrics of the MQTT 5 uplink and downlink (SPEC §5). Every series carries the connector id.

The per-batch series (bytes, frames, batch size, latency, in-flight) are plain numbers in a `Meter`
that the runner's thread adds to, turned into Prometheus series only when scraped (`_MeterCollector`):
at 36 000 frames/s and batch 32 a runner settles 1 125 batches a second, and prometheus_client's
`Counter.inc`/`Histogram.observe` take a lock and walk the buckets in Python on each one. A meter has
one writer (the runner of that connector id; a restarted runner takes over its meter, so the counters
stay monotonic); a scrape reads numbers that are each whole, as prometheus_client's own do.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from edge_gateway.metrics import LATENCY_BUCKETS, REGISTRY

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000)


@dataclass
class Buckets:
    """A histogram's counts per bucket (not cumulative; the last one is +Inf) and its sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1  # the first bound ≥ v: Prometheus' `le`
        self.sum += v

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        n = 0
        for bound, c in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts, strict=True):
            n += c
            out.append((bound, n))
        return out


@dataclass
class Meter:
    """One connector's uplink figures, as the runner's thread keeps them."""

    out_bytes: int = 0  # payload bytes handed to the broker (retries included)
    frames: int = 0  # frames whose batch the broker finally acknowledged
    inflight: int = 0
    batch_size: Buckets = field(default_factory=lambda: Buckets(BATCH_BUCKETS))
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BUCKETS))


_meters: dict[str, Meter] = {}


def meter(connector_id: str) -> Meter:
    """The meter of a connector id (made on first use, kept for the process)."""
    return _meters.setdefault(connector_id, Meter())


class _MeterCollector:
    """connector_out_bytes_total, connector_out_frames_total, connector_batch_size,
    connector_latency_seconds and connector_inflight, from the meters."""

    def describe(self) -> list[Metric]:
        return list(self._families({}))

    def collect(self) -> list[Metric]:
        return list(self._families(dict(_meters)))

    @staticmethod
    def _families(meters: dict[str, Meter]) -> Iterator[Metric]:
        lbl = ["connector"]
        out = CounterMetricFamily(
            "connector_out_bytes", "Payload bytes handed to the broker (batches, retries included)", labels=lbl
        )
        frames = CounterMetricFamily(
            "connector_out_frames", "Frames whose batch the broker finally acknowledged", labels=lbl
        )
        size = HistogramMetricFamily("connector_batch_size", "Frames per published batch", labels=lbl)
        latency = HistogramMetricFamily(
            "connector_latency_seconds",
            "Publish → final acknowledgement (PUBCOMP for QoS2, PUBACK for QoS1, socket write for QoS0)",
            labels=lbl,
        )
        inflight = GaugeMetricFamily("connector_inflight", "Batches published and not yet acknowledged", labels=lbl)
        for cid, m in meters.items():
            out.add_metric([cid], m.out_bytes)
            frames.add_metric([cid], m.frames)
            size.add_metric([cid], m.batch_size.cumulative(), m.batch_size.sum)
            latency.add_metric([cid], m.latency.cumulative(), m.latency.sum)
            inflight.add_metric([cid], m.inflight)
        yield from (out, frames, size, latency, inflight)


REGISTRY.register(_MeterCollector())  # type: ignore[arg-type]

RETRY = Counter(
    "connector_retry",
    "Retries: `connect` = a (re)connection attempt after a failure, `publish` = a batch the broker refused",
    ["connector", "what"],
    registry=REGISTRY,
)
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
