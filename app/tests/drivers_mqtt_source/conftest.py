"""Helpers for the MQTT source tests: a publisher on the source broker, sources that are always
stopped, and a collector that drains the bus until it has what a test waits for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

from edge_gateway import metrics
from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.model import BusCfg
from edge_gateway.core.frame import Frame
from edge_gateway.drivers.mqtt_source import MqttSource, start_source
from edge_gateway.drivers.mqtt_source.model import (
    MqttDriver,
    MqttEndpoint,
    MqttSourceCfg,
    MqttTag,
    Subscription,
)
from edge_gateway.testkit import LOOPBACK, Mosquitto


class Publisher:
    """A device on the source broker."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None, tls: dict[str, str] | None = None) -> None:
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=f"device-{port}", protocol=MQTTv5)
        if auth is not None:
            self.client.username_pw_set(*auth)
        if tls is not None:
            self.client.tls_set(**tls)
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()

    def pub(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(mosquitto.port)
    try:
        yield p
    finally:
        p.close()


def endpoint(broker: Mosquitto, **kw: Any) -> MqttEndpoint:
    return MqttEndpoint(
        kw.pop("id", "local"), "mqtt", LOOPBACK, broker.port, kw.pop("client_id", f"gw-src-{broker.port}"), **kw
    )


def driver(
    ident: str = "sensors",
    subs: Sequence[tuple[str, int]] = (("sensors/#", 1),),
    endpoint_id: str = "local",
    **cfg: Any,
) -> MqttDriver:
    return MqttDriver(
        ident, "static", endpoint_id, "mqtt", MqttSourceCfg(tuple(Subscription(f, q) for f, q in subs), **cfg)
    )


SourceFactory = Callable[..., tuple[MqttSource, FrameBus]]


@pytest.fixture
def source() -> Iterator[SourceFactory]:
    """start(endpoint, drivers, tags, bus=None) → a running source, connected, with its bus."""
    started: list[MqttSource] = []

    def start(
        ep: MqttEndpoint,
        drivers: Sequence[MqttDriver],
        tags: Sequence[MqttTag],
        bus: FrameBus | None = None,
        connected: bool = True,
    ) -> tuple[MqttSource, FrameBus]:
        bus = FrameBus(BusCfg(capacity=10_000)) if bus is None else bus
        src = start_source(ep, drivers, tags, bus)
        started.append(src)
        if connected:
            wait_for(lambda: src.connected and all(s["granted"] is not None for s in subscriptions(src)))
        return src, bus

    yield start
    for src in started:
        src.stop()
        assert not src.is_alive()


def subscriptions(src: MqttSource) -> list[dict[str, Any]]:
    return [s for d in src.status()["drivers"].values() for s in d["subscriptions"]]


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def collect(bus: FrameBus, n: int, timeout: float = 10.0, what: str = "") -> list[Frame]:
    """Drain the bus until `n` frames arrived; fails on timeout saying what it waited for and what arrived."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        if time.monotonic() > deadline:
            last = ", ".join(f"{f.tag}={f.value!r} q={f.q}" for f in out[-5:]) or "nothing"
            raise AssertionError(
                f"collect: waited {timeout:g}s for {what or f'{n} frame(s)'} on the bus, got {len(out)} of {n}"
                f" (last: {last})"
            )
        out.extend(bus.drain(n - len(out), 0.05))
    return out


def metric(name: str, **labels: str) -> float:
    return metrics.value(name, labels)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """A plant-local broker (the MQTT source's) and a cloud broker (the uplink's)."""
    source = Mosquitto(workdir=tmp_path / "source-broker").start()
    cloud = Mosquitto(workdir=tmp_path / "cloud-broker").start()
    try:
        yield source, cloud
    finally:
        source.stop()
        cloud.stop()
