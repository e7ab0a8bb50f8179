"""The S7 line against a real snap7 server (tools/plcsim/s7_server.py): every datatype with the right
value, the planner's requests per cycle as the server counts them, writes, a server restart."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge_gateway.core.driver import DeviceItem, EndpointItem, TagItem
from edge_gateway.core.frame import Frame
from edge_gateway.drivers.s7 import planner
from edge_gateway.drivers.s7.line import S7Line
from edge_gateway.drivers.s7.plugin import PLUGIN
from edge_gateway.testkit import LOOPBACK
from tests.drivers_s7.conftest import S7Sim


class Bus:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.cond = threading.Condition()

    def publish(self, frames: list[Frame]) -> None:
        with self.cond:
            self.frames += frames
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[Frame]], bool], timeout: float = 20) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.frames), timeout)

    def last(self) -> dict[str, Frame]:
        with self.cond:
            return {f.tag: f for f in self.frames}


def tag(name: str, datatype: str, access: str = "R", **address: Any) -> TagItem:
    return TagItem(name, "d1", access, datatype, PLUGIN.build_address(name, datatype, address))  # type: ignore[arg-type]


EXPECTED: list[tuple[TagItem, Any]] = [
    (tag("i16", "int16", area="DB", db=10, start=4), -1234),
    (tag("w", "uint16", area="DB", db=10, start=10), 0xBEEF),
    (tag("dw", "uint32", area="DB", db=10, start=12), 0xDEADBEEF),
    (tag("lreal", "float64", area="DB", db=10, start=16), 3.141592653589793),
    (tag("str", "string", area="DB", db=10, start=24, size=22), "hello s7"),
    (tag("bit3", "bool", area="DB", db=10, start=46, bit=3), True),
    (tag("bit2", "bool", area="DB", db=10, start=46, bit=2, size=1), False),
    (tag("real_sp", "float32", access="RW", area="DB", db=10, start=48), 21.5),
    (tag("int_sp", "int16", access="RW", area="DB", db=10, start=52), 100),
    (tag("cmd0", "bool", access="RW", area="DB", db=10, start=54, bit=0), False),
    (tag("lint", "int64", area="DB", db=10, start=56), -5),
    (tag("udint", "uint32", area="DB", db=10, start=64, size=4), 4_000_000_000),
    (tag("db20", "float32", area="DB", db=20, start=0), -1.5),
    (tag("m01", "bool", area="M", start=0, bit=1), True),
    (tag("mw2", "int16", area="M", start=2), 777),
    (tag("i02", "bool", area="I", start=0, bit=2), True),
    (tag("i01", "bool", area="I", start=0, bit=1), False),
    (tag("iw2", "uint16", area="I", start=2), 4242),
    (tag("q07", "bool", area="Q", start=0, bit=7), True),
]
CHANGING = [tag("temp", "float32", area="DB", db=10, start=0), tag("counter", "int32", area="DB", db=10, start=6)]


def _line(port: int, tags: list[TagItem], bus: Bus, **cfg: Any) -> S7Line:
    ep = EndpointItem("plc", "s7", LOOPBACK, port, PLUGIN.build_endpoint("plc", "s7", {"rack": 0, "slot": 1}))
    dev = DeviceItem("d1", "static", "s7", "plc", PLUGIN.build_cfg("d1", {"polling": "100ms", **cfg}))
    w = S7Line(ep, [dev], tags, bus)
    w.start()
    return w


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def line(s7sim: S7Sim, bus: Bus) -> Iterator[S7Line]:
    w = _line(s7sim.port, [t for t, _ in EXPECTED] + CHANGING, bus, enable_write=True)
    try:
        yield w
    finally:
        w.stop()


def test_every_datatype_arrives_with_the_right_value(line: S7Line, bus: Bus, s7sim: S7Sim) -> None:
    names = {t.tag for t, _ in EXPECTED} | {"temp", "counter"}
    assert bus.wait_for(lambda fs: names <= {f.tag for f in fs if f.q == "good"}), bus.last()
    last = bus.last()
    for t, want in EXPECTED:
        assert last[t.tag].value == want and type(last[t.tag].value) is type(want), (t.tag, last[t.tag])
    # Changing values: the counter climbs, the temperature is the plant's sine.
    first = last["counter"].value
    assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.value > first for f in fs))
    temp = bus.last()["temp"].value
    assert isinstance(temp, float) and 15.0 <= temp <= 25.0
    st = line.status()["d1"]
    assert st["state"] == "up" and st["pdu"] > 0 and st["requests_per_cycle"] == 1  # 6 ranges, one PDU


def test_writes_reach_the_server(line: S7Line, bus: Bus, s7sim: S7Sim) -> None:
    assert bus.wait_for(lambda fs: any(f.tag == "real_sp" for f in fs))
    by = {t.tag: t for t, _ in EXPECTED}
    line.submit(by["real_sp"], 42.25).result(10)
    line.submit(by["int_sp"], -300).result(10)
    s7sim.op(op="set", area="DB", db=10, start=54, hex="f0")  # other bits of the byte must survive
    line.submit(by["cmd0"], True).result(10)
    assert struct.unpack(">f", s7sim.get("DB", 48, 4, db=10))[0] == 42.25
    assert struct.unpack(">h", s7sim.get("DB", 52, 2, db=10))[0] == -300
    assert s7sim.get("DB", 54, 1, db=10) == b"\xf1"
    line.submit(by["cmd0"], False).result(10)
    assert s7sim.get("DB", 54, 1, db=10) == b"\xf0"
    assert bus.wait_for(lambda fs: any(f.tag == "real_sp" and f.value == 42.25 for f in fs))


def test_server_restart_marks_bad_disconnected_once_then_reconnects(line: S7Line, bus: Bus, s7sim: S7Sim) -> None:
    assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "good" for f in fs))
    port = s7sim.port
    s7sim.stop()
    assert bus.wait_for(lambda fs: {t.tag for t, _ in EXPECTED} <= {f.tag for f in fs if f.q == "bad:disconnected"})
    assert line.status()["d1"]["state"] == "down"
    with bus.cond:
        mark = len(bus.frames)
    by = {t.tag: t for t, _ in EXPECTED}
    with pytest.raises(ConnectionError):
        line.submit(by["int_sp"], 1).result(60)  # refused while down, never queued for later
    again = S7Sim(port).start()
    try:
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "good" for f in fs[mark:]), 60)
        after = bus.frames[mark:]
        assert sum(1 for f in after if f.tag == "i16" and f.q == "bad:disconnected") == 0  # marked once
        assert line.status()["d1"]["connects"] == 2
    finally:
        again.stop()


def test_an_address_the_plc_lacks_is_bad_and_the_rest_still_good(s7sim: S7Sim, bus: Bus) -> None:
    tags = [tag("ok", "int16", area="DB", db=10, start=4), tag("nodb", "int16", area="DB", db=99, start=0)]
    w = _line(s7sim.port, tags, bus)
    try:
        assert bus.wait_for(lambda fs: {"ok", "nodb"} <= {f.tag for f in fs})
        last = bus.last()
        assert last["ok"].q == "good" and last["ok"].value == -1234
        assert last["nodb"].q.startswith("bad:") and last["nodb"].value is None
        assert w.status()["d1"]["state"] == "up"
    finally:
        w.stop()


def test_requests_per_cycle_as_the_server_counts_them(s7sim: S7Sim, bus: Bus) -> None:
    # 200 int16 spread over DB10 (every 2nd word of 0..255 is not all there: DB10 is 256 bytes), M, I, Q,
    # DB20: the planner's count is what goes on the wire.
    tags = [tag(f"db10.{i}", "int16", area="DB", db=10, start=i) for i in range(0, 254, 6)]
    tags += [tag(f"db20.{i}", "uint16", area="DB", db=20, start=i) for i in range(0, 62, 4)]
    tags += [tag(f"m.{i}", "bool", area="M", start=i, bit=i % 8) for i in range(0, 64, 3)]
    tags += [tag(f"i.{i}", "uint16", area="I", start=i) for i in (0, 4, 8)]
    tags += [tag("q", "bool", area="Q", start=15, bit=1)]
    w = _line(s7sim.port, tags, bus, max_pdu=240)
    try:
        assert bus.wait_for(lambda fs: {t.tag for t in tags} <= {f.tag for f in fs if f.q == "good"})
    finally:
        w.stop()
    st = w.status()["d1"]
    plan = planner.plan(tags, st["pdu"] and min(st["pdu"], 240))
    assert st["requests_per_cycle"] == len(plan) < len(tags) // 10
    served = s7sim.op(op="stats")["requests"]
    setup = 1  # the PDU negotiation
    assert served - setup == st["cycles"] * len(plan), (served, st)


def test_the_planner_packs_a_spread_of_tags_into_few_requests() -> None:
    # 1 000 int16 in one DB, contiguous: 2 000 bytes = ceil(2000 / (480 - 18)) ranges.
    dense = [tag(f"t{i}", "int16", area="DB", db=1, start=2 * i) for i in range(1000)]
    rs = planner.ranges(dense, 480)
    assert len(rs) == 5 and all(r.size <= 462 for r in rs) and sum(len(r.tags) for r in rs) == 1000
    assert len(planner.plan(dense, 480)) == 5
    # Scattered: 40 DBs of 3 REALs each, far apart: 40 ranges, packed 20 a request (protocol limit).
    scattered = [tag(f"s{d}.{k}", "float32", area="DB", db=d, start=200 * k) for d in range(1, 41) for k in range(3)]
    assert len(planner.ranges(scattered, 960)) == 120
    reqs = planner.plan(scattered, 960)
    assert len(reqs) == 6 and all(len(r) <= planner.MAX_ITEMS for r in reqs)
    # Small gaps are read through: one range.
    gappy = [tag(f"g{i}", "float32", area="M", start=10 * i) for i in range(20)]
    assert len(planner.ranges(gappy, 240)) == 1
    # Deterministic.
    assert planner.plan(list(reversed(dense)), 480) == planner.plan(dense, 480)


def test_fault_injection_stop_start_and_slow_answers(s7sim: S7Sim, bus: Bus) -> None:
    ep = EndpointItem("plc", "s7", LOOPBACK, s7sim.port, PLUGIN.build_endpoint("plc", "s7", {"timeout": "300ms"}))
    dev = DeviceItem("d1", "static", "s7", "plc", PLUGIN.build_cfg("d1", {"polling": "100ms"}))
    w = S7Line(ep, [dev], CHANGING, bus)
    w.start()
    try:
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "good" for f in fs))
        s7sim.op(op="stop")  # the listener and its clients go away, the process stays
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "bad:disconnected" for f in fs))
        with bus.cond:
            mark = len(bus.frames)
        s7sim.op(op="start")
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "good" for f in fs[mark:]), 60)
        # Answers slower than the endpoint's timeout: the line gives up on the link and says so.
        with bus.cond:
            mark = len(bus.frames)
        s7sim.op(op="slow", ms=1500)
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "bad:disconnected" for f in fs[mark:]), 60)
        s7sim.op(op="slow", ms=0)
        with bus.cond:
            mark = len(bus.frames)
        assert bus.wait_for(lambda fs: any(f.tag == "counter" and f.q == "good" for f in fs[mark:]), 60)
        assert w.status()["d1"]["connects"] >= 3
    finally:
        w.stop()
