"""The MQTT source against a real Mosquitto: values, mapping, malformed payloads, reconnect,
overflow and health, retained handling. Every test has its own broker (conftest `mosquitto`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.expr import compile_scale
from edge_gateway.config.model import Backoff, BusCfg
from edge_gateway.core.frame import GOOD, Frame
from edge_gateway.drivers.mqtt_source import ReadOnlyTag
from edge_gateway.drivers.mqtt_source.model import MqttTag, Payload
from edge_gateway.testkit import Mosquitto

from .conftest import Publisher, SourceFactory, collect, driver, endpoint, metric, wait_for


def tag(t: str, topic: str, datatype: str = "float64", fmt: str = "number", pointer: str = "", **kw: object) -> MqttTag:
    return MqttTag(t, kw.pop("driver_id", "sensors"), topic, Payload(fmt, pointer, **kw), datatype)  # type: ignore[arg-type]


def by_tag(frames: list[Frame]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for f in frames:
        out.setdefault(f.tag, []).append(f.value)
    return out


def test_wildcard_topics_arrive_as_mapped_tags_in_order(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    t = MqttTag("lab.{1}.temp", "sensors", "sensors/+/temp", Payload("number"), "int32", compile_scale("value / 10"))
    src, bus = source(endpoint(mosquitto), [driver()], [t])
    sent = {dev: list(range(i * 100, i * 100 + 40)) for i, dev in enumerate(("boiler", "oven", "kiln"))}
    for k in range(40):  # interleaved, as three devices publishing at once would
        for dev, values in sent.items():
            publisher.pub(f"sensors/{dev}/temp", str(values[k]), qos=1)
    frames = collect(bus, 120)
    assert by_tag(frames) == {f"lab.{dev}.temp": [v / 10 for v in values] for dev, values in sent.items()}
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert {f.q for f in frames} == {GOOD}
    assert frames[0].meta == {"topic": "sensors/boiler/temp", "qos": 1, "retain": False, "dup": False}
    st = src.status()["drivers"]["sensors"]
    assert (st["received"], st["frames"], st["dropped"], st["malformed"], st["health"]) == (120, 120, 0, 0, "ok")


def test_exact_beats_wildcard_and_payload_formats(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    tags = [
        tag("lab.{1}.temp", "sensors/+/temp", "float32"),
        tag("lab.boiler_temp_exact", "sensors/boiler/temp", "float32"),
        tag("env.{1}.t", "sensors/+/env", "float64", "json", "/sample/t"),
        tag("env.{1}.rh", "sensors/+/env", "uint16", "json", "/sample/rh"),
        tag("raw.{1}", "sensors/+/raw", "int32", "bytes", endian="little"),
        tag("blob.{1}", "sensors/+/blob", "binary", "bytes"),
        tag("name.{1}", "sensors/+/name", "string", "string"),
        tag("deep.{1}", "sensors/deep/#", "bool", "number"),
    ]
    src, bus = source(endpoint(mosquitto), [driver()], tags)
    publisher.pub("sensors/boiler/temp", "80.5")
    publisher.pub("sensors/oven/temp", "200")
    publisher.pub("sensors/r1/env", json.dumps({"sample": {"t": 21.25, "rh": 40}}))
    publisher.pub("sensors/r2/raw", struct.pack("<i", -123456))
    publisher.pub("sensors/r2/blob", b"\x00\x01\xfe")
    publisher.pub("sensors/r3/name", "pump 3")
    publisher.pub("sensors/deep/a/b", "true")
    frames = collect(bus, 8)
    assert [(f.tag, f.value) for f in frames] == [
        ("lab.boiler_temp_exact", 80.5),
        ("lab.oven.temp", 200.0),
        ("env.r1.t", 21.25),
        ("env.r1.rh", 40),
        ("raw.r2", -123456),
        ("blob.r2", b"\x00\x01\xfe"),
        ("name.r3", "pump 3"),
        ("deep.a.b", True),
    ]


def test_malformed_payloads_are_counted_and_never_stop_the_driver(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    tags = [
        tag("m.{1}", "bad/+/n", "int16", driver_id="malf"),
        tag("j.{1}", "bad/+/j", "uint16", "json", "/v", driver_id="malf"),
    ]
    src, bus = source(endpoint(mosquitto), [driver("malf", [("bad/#", 1)])], tags)
    reasons = ("number", "range", "json", "pointer", "tag")
    before = {r: metric("mqtt_source_malformed_total", driver_id="malf", reason=r) for r in reasons}
    publisher.pub("bad/a/n", "twelve")
    publisher.pub("bad/a/n", "99999")  # out of int16 range
    publisher.pub("bad/a/j", "{oops")
    publisher.pub("bad/a/j", '{"w": 1}')
    publisher.pub("bad/a b/n", "1")  # the captured level makes no valid tag: counted, no frame
    publisher.pub("bad/unmapped", "1")
    publisher.pub("bad/a/n", "12")  # and the driver still works
    frames = collect(bus, 5)
    assert [(f.tag, f.value, f.q) for f in frames] == [
        ("m.a", None, "bad:malformed"),
        ("m.a", None, "bad:range"),
        ("j.a", None, "bad:malformed"),
        ("j.a", None, "bad:malformed"),
        ("m.a", 12, GOOD),
    ]
    after = {r: metric("mqtt_source_malformed_total", driver_id="malf", reason=r) for r in before}
    assert {r: after[r] - before[r] for r in after} == {"number": 1, "range": 1, "json": 1, "pointer": 1, "tag": 1}
    st = src.status()["drivers"]["malf"]
    assert (st["malformed"], st["unmapped"], st["health"]) == (5, 1, "ok")
    assert src.is_alive()


def test_broker_restart_reconnects_and_resumes(tmp_path: Path, source: SourceFactory) -> None:
    broker = Mosquitto(workdir=tmp_path / "mq").start()
    try:
        ep = endpoint(broker, backoff=Backoff(0.05, 0.2))
        src, bus = source(ep, [driver("restart", [("plant/#", 1)])], [tag("p.{1}", "plant/+", driver_id="restart")])
        dev = Publisher(broker.port)
        dev.pub("plant/a", "1")
        assert [f.value for f in collect(bus, 1)] == [1.0]
        dev.close()
        reconnects = metric("mqtt_source_reconnect_total", endpoint_id="local")
        broker.stop()
        wait_for(lambda: src.health("restart") == "down", what="health down")
        assert metric("mqtt_source_health", driver_id="restart") in (0.0, 2.0)
        wait_for(lambda: metric("mqtt_source_reconnect_total", endpoint_id="local") > reconnects + 1, what="retries")
        broker.start()  # same port, a fresh broker: no session, so the source subscribes again
        wait_for(lambda: src.connected and src.health("restart") == "ok", what="reconnect")
        wait_for(lambda: all(s["granted"] == 1 for s in src.status()["drivers"]["restart"]["subscriptions"]))
        dev = Publisher(broker.port)
        for v in (2, 3):
            dev.pub("plant/a", str(v))
        assert [f.value for f in collect(bus, 2)] == [2.0, 3.0]
        dev.close()
        assert src.status()["reconnects"] >= 1
        assert metric("mqtt_source_connected", endpoint_id="local") == 1.0
    finally:
        broker.stop()


def test_flood_beyond_the_bound_while_the_bus_is_held_is_dropped_and_counted(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    drv = driver("flood", [("flood/+/v", 1), ("flood/other", 0)], queue=20, recover=0.3)
    bus = FrameBus(BusCfg(capacity=10_000))
    src, _ = source(endpoint(mosquitto), [drv], [tag("f.{1}", "flood/+/v", "int32", driver_id="flood")], bus=bus)
    label = {"driver_id": "flood", "subscription": "flood/+/v"}
    dropped0 = metric("mqtt_source_drop_total", **label)
    bus.hold()
    for i in range(100):
        publisher.pub("flood/x/v", str(i), qos=1)
    wait_for(lambda: src.status()["drivers"]["flood"]["received"] == 100, what="all 100 received")
    assert src.health("flood") == "degraded"
    wait_for(lambda: metric("mqtt_source_health", driver_id="flood") == 1.0, what="degraded gauge")
    assert metric("mqtt_source_drop_total", **label) - dropped0 == 80
    assert metric("mqtt_source_drop_total", driver_id="flood", subscription="flood/other") == 0.0
    assert src.status()["drivers"]["flood"]["queued"] == 20
    assert len(bus) == 0  # nothing reaches a held bus
    bus.release()
    frames = collect(bus, 20)
    assert [f.value for f in frames] == list(range(20))  # the first 20 were kept, in order
    wait_for(lambda: src.health("flood") == "ok", what="health back to ok")
    wait_for(lambda: metric("mqtt_source_health", driver_id="flood") == 0.0, what="ok gauge")
    publisher.pub("flood/x/v", "100")
    assert [f.value for f in collect(bus, 1)] == [100]
    st = src.status()["drivers"]["flood"]
    assert (st["dropped"], st["frames"], st["queued"]) == (80, 21, 0)


def test_retained_take_and_ignore(mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory) -> None:
    publisher.pub("cfg/setpoint", "42", retain=True)
    tags = [tag("take.sp", "cfg/setpoint", driver_id="taker"), tag("ign.sp", "cfg/setpoint", driver_id="ignorer")]
    drivers = [driver("taker", [("cfg/+", 1)], retained="take"), driver("ignorer", [("cfg/#", 1)], retained="ignore")]
    src, bus = source(endpoint(mosquitto), drivers, tags)
    first = collect(bus, 1)
    assert [(f.tag, f.value, f.meta and f.meta["retain"]) for f in first] == [("take.sp", 42.0, True)]
    publisher.pub("cfg/setpoint", "43")  # a live message reaches both drivers, once each
    live = collect(bus, 2)
    assert sorted((f.tag, f.value, f.meta and f.meta["retain"]) for f in live) == [
        ("ign.sp", 43.0, False),
        ("take.sp", 43.0, False),
    ]
    assert bus.drain(10, 0.2) == []


def test_two_drivers_on_one_endpoint_and_writes_are_refused(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    drivers = [driver("dev_a", [("a/#", 2)]), driver("dev_b", [("b/+", 0)])]
    tags = [tag("a.{1}", "a/#", "int16", driver_id="dev_a"), tag("b.{1}", "b/+", "int16", driver_id="dev_b")]
    src, bus = source(endpoint(mosquitto), drivers, tags)
    assert [s["granted"] for d in src.status()["drivers"].values() for s in d["subscriptions"]] == [2, 0]
    publisher.pub("a/x/y", "1", qos=2)
    publisher.pub("b/z", "2", qos=0)
    frames = collect(bus, 2)
    assert sorted((f.tag, f.value, f.meta and f.meta["qos"]) for f in frames) == [("a.x.y", 1, 2), ("b.z", 2, 0)]
    fut = src.submit_write(tags[0], 5)
    with pytest.raises(ReadOnlyTag, match="read-only"):
        fut.result(0)
    src.update_tags("dev_b", [tag("renamed.{1}", "b/+", "int16", driver_id="dev_b")])  # hot swap of the tag map
    publisher.pub("b/z", "3", qos=0)
    assert [(f.tag, f.value) for f in collect(bus, 1)] == [("renamed.z", 3)]
