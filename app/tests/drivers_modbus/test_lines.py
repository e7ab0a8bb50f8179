"""Line threads against the PLC simulator over real TCP and real socat pty pairs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge_gateway.config.expr import compile_scale
from edge_gateway.drivers.modbus.line import WriteError, start_line
from edge_gateway.metrics import value
from edge_gateway.testkit import free_port

from .conftest import SAMPLES, collect, drain_for, driver, serial_endpoint, tcp_endpoint, var


def test_every_datatype_and_order_decodes_over_tcp(sim_factory, bus) -> None:
    points, variables, addr = [], [], 0
    for dt, v in sorted(SAMPLES.items()):
        for wo in ("big", "little"):
            for en in ("big", "little"):
                points.append(
                    {"table": "holding", "addr": addr, "type": dt, "value": v, "word_order": wo, "endian": en}
                )
                variables.append(var(f"{dt}.{wo}.{en}", "d1", "holding", addr, dt, endian=en, word_order=wo))
                addr += variables[-1].address.len
    points += [
        {"table": "holding", "addr": 200, "type": "string", "len": 4, "value": "PUMP-01"},
        {"table": "coil", "addr": 3, "value": True},
        {"table": "discrete", "addr": 9, "value": True},
    ]
    variables += [
        var("s", "d1", "holding", 200, "string", length=4),
        var("c", "d1", "coil", 3, "bool"),
        var("di", "d1", "discrete", 9, "bool"),
    ]
    sim = sim_factory({"units": [{"unit": 1, "points": points}]})
    line = start_line(tcp_endpoint(sim.port), [driver("d1", 1, "plc")], variables, bus)
    try:
        got = {f.tag: f for f in collect(bus, len(variables))}
    finally:
        line.stop()
    for v in variables:
        f = got[v.tag]
        assert f.q == "good", (v.tag, f.q)
        want = SAMPLES.get(v.datatype, {"string": "PUMP-01", "bool": True}.get(v.datatype))
        assert f.value == pytest.approx(want), v.tag


def test_hundred_points_arrive_with_the_fewest_requests(sim_factory, bus) -> None:
    sim = sim_factory(
        {
            "units": [
                {
                    "unit": 7,
                    "points": [{"table": "holding", "addr": a, "type": "uint16", "value": a * 3} for a in range(100)],
                }
            ]
        }
    )
    variables = [var(f"p{a}", "d7", "holding", a, "uint16", scale=compile_scale("value / 3")) for a in range(100)]
    before = value("modbus_pdu_total", {"driver_id": "d7", "func": "read_holding", "result": "ok"})
    line = start_line(
        tcp_endpoint(sim.port), [driver("d7", 7, "plc", polling=60, max_regs_per_req=120)], variables, bus
    )
    try:
        frames = collect(bus, 100)
        assert line.plan() == [
            {"driver_id": "d7", "unit": 7, "fc": 3, "start": 0, "count": 100, "tags": [f"p{a}" for a in range(100)]}
        ]
    finally:
        line.stop()
    assert sorted((f.tag, f.value) for f in frames) == sorted((f"p{a}", a) for a in range(100))
    assert value("modbus_pdu_total", {"driver_id": "d7", "func": "read_holding", "result": "ok"}) - before == 1
    assert len({f.ts for f in frames}) == 1  # one response, one timestamp


def test_dead_unit_does_not_starve_live_units_on_a_serial_line(sim_factory, bus, pty_pair) -> None:
    profile = {
        "units": [
            {"unit": u, "points": [{"table": "holding", "addr": 0, "type": "uint16", "value": u}]} for u in (1, 2)
        ]
    }
    sim_factory(profile, tcp=False, rtu=[pty_pair.b], baud=19200)
    ep = serial_endpoint(pty_pair.a, baud=19200, timeout=0.3)
    drivers = [
        driver("m1", 1, "rs485", polling=0.2),
        driver("m2", 2, "rs485", polling=0.2),
        driver("dead", 3, "rs485", polling=0.2, retry=2),
    ]
    variables = [var(f"{d.id}.v", d.id, "holding", 0, "uint16") for d in drivers]
    line = start_line(ep, drivers, variables, bus)
    try:
        frames = drain_for(bus, 4.0)
        status = line.status()
    finally:
        line.stop()
    good = {t: sum(1 for f in frames if f.tag == t and f.q == "good") for t in ("m1.v", "m2.v")}
    # 4 s at 200 ms is 20 polls each; a dead unit retried every cycle would cost 0.9 s per cycle.
    assert min(good.values()) >= 12, good
    assert status["dead"]["state"] == "fault" and status["m1"]["state"] == "ok"
    dead = [f for f in frames if f.tag == "dead.v"]
    assert dead and all(f.q == "bad:timeout" for f in dead) and len(dead) <= 4
    assert value("modbus_fault", {"driver_id": "dead"}) == 1


def test_exception_2_on_a_merged_read_is_split_and_remembered(sim_factory, bus) -> None:
    sim = sim_factory(
        {
            "units": [
                {
                    "unit": 1,
                    "points": [
                        {"table": "holding", "addr": 0, "type": "uint16", "value": 11},
                        {"table": "holding", "addr": 5, "type": "uint16", "value": 55},
                    ],
                    "faults": {"exceptions": [{"table": "holding", "from": 2, "to": 3, "code": 2}]},
                }
            ]
        }
    )
    variables = [var("a", "d", "holding", 0, "uint16"), var("b", "d", "holding", 5, "uint16")]
    line = start_line(tcp_endpoint(sim.port), [driver("d", 1, "plc", polling=0.1)], variables, bus)
    try:
        first = collect(bus, 2)
        frames = collect(bus, 6)
        plan = line.plan()
    finally:
        line.stop()
    assert {(f.tag, f.value, f.q) for f in first} == {("a", 11, "good"), ("b", 55, "good")}
    assert all(f.q == "good" for f in frames)
    assert [(r["start"], r["count"]) for r in plan] == [(0, 1), (5, 1)]


def test_single_illegal_point_gets_bad_quality(sim_factory, bus) -> None:
    sim = sim_factory({"units": [{"unit": 1, "faults": {"exceptions": [{"from": 9, "to": 9, "code": 2}]}}]})
    line = start_line(tcp_endpoint(sim.port), [driver("d", 1, "plc")], [var("x", "d", "holding", 9, "uint16")], bus)
    try:
        [f] = collect(bus, 1)
    finally:
        line.stop()
    assert f.q == "bad:exception_2" and f.value is None


def test_reconnects_after_the_simulator_restarts(sim_factory, bus) -> None:
    sim = sim_factory(
        {"units": [{"unit": 1, "points": [{"table": "holding", "addr": 0, "type": "uint16", "value": 5}]}]}
    )
    before = value("modbus_reconnect_total", {"endpoint_id": "plc"})
    line = start_line(
        tcp_endpoint(sim.port, timeout=0.3),
        [driver("d", 1, "plc", polling=0.1)],
        [var("x", "d", "holding", 0, "uint16")],
        bus,
    )
    try:
        assert collect(bus, 1, pred=lambda f: f.q == "good")
        sim.stop()
        assert collect(bus, 1, pred=lambda f: f.q == "bad:disconnected")
        sim.start()  # same port
        assert collect(bus, 1, timeout=15, pred=lambda f: f.q == "good")
    finally:
        line.stop()
    assert value("modbus_reconnect_total", {"endpoint_id": "plc"}) > before


def test_bad_crc_and_garbage_are_bad_quality_then_recover(sim_factory, bus, pty_pair) -> None:
    sim = sim_factory(
        {
            "units": [
                {
                    "unit": 1,
                    "points": [{"table": "holding", "addr": 0, "type": "uint16", "value": 42}],
                    "faults": {"bad_crc_every": 2},
                }
            ]
        },
        tcp=False,
        rtu=[pty_pair.b],
        baud=115200,
    )
    line = start_line(
        serial_endpoint(pty_pair.a, baud=115200),
        [driver("d", 1, "rs485", polling=0.05, retry=0)],
        [var("x", "d", "holding", 0, "uint16")],
        bus,
    )
    try:
        frames = collect(bus, 6)
        qualities = {f.q for f in frames}
        assert "bad:crc" in qualities and "good" in qualities
        sim.ctl(bus="tcp", op="fault", unit=1, bad_crc_every=0, garbage_every=2)
        frames = collect(bus, 6)
        assert "good" in {f.q for f in frames} and {f.q for f in frames} <= {
            "good",
            "bad:protocol",
            "bad:timeout",
            "bad:crc",
        }
        sim.ctl(op="fault", unit=1, garbage_every=0)
        time.sleep(0.2)
        bus.drain(10000, 0)
        assert all(f.q == "good" for f in collect(bus, 5))
    finally:
        line.stop()


def test_writes_reach_the_device(sim_factory, bus) -> None:
    sim = sim_factory({"units": [{"unit": 1}]})
    sp = var("sp", "d", "holding", 20, "int16", access="RW", scale=compile_scale("value / 10"))
    big = var("big", "d", "holding", 30, "float32", access="RW")
    pump = var("pump", "d", "coil", 4, "bool", access="RW")
    ro = var("ro", "d", "holding", 40, "uint16")
    line = start_line(
        tcp_endpoint(sim.port), [driver("d", 1, "plc", polling=5, enable_write=True)], [sp, big, pump, ro], bus
    )
    try:
        line.submit_write(sp, 21.5).result(5)  # FC06
        line.submit_write(big, 1.5).result(5)  # FC16
        line.submit_write(pump, True).result(5)  # FC05
        with pytest.raises(WriteError, match="not writable"):
            line.submit_write(ro, 1).result(5)
        with pytest.raises(WriteError, match="out of range"):
            line.submit_write(sp, 99999).result(5)
    finally:
        line.stop()
    assert sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 215
    assert [sim.ctl(op="get", unit=1, table="holding", addr=a)["value"] for a in (30, 31)] == [0x3FC0, 0]
    assert sim.ctl(op="get", unit=1, table="coil", addr=4)["value"] is True


def test_write_refused_without_enable_write(sim_factory, bus) -> None:
    sim = sim_factory({"units": [{"unit": 1}]})
    sp = var("sp", "d", "holding", 20, "int16", access="RW")
    line = start_line(tcp_endpoint(sim.port), [driver("d", 1, "plc", polling=5)], [sp], bus)
    try:
        with pytest.raises(WriteError, match="enable_write"):
            line.submit_write(sp, 1).result(5)
    finally:
        line.stop()
    assert sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 0


def test_local_echo_and_rate_limit_on_rtu(sim_factory, bus, pty_pair) -> None:
    """An adapter that echoes: the simulator is told to, and the line discards the echo."""
    sim_factory(
        {"units": [{"unit": 1, "points": [{"table": "holding", "addr": 0, "type": "uint16", "value": 9}]}]},
        tcp=False,
        rtu=[pty_pair.b],
        baud=115200,
        extra=["--echo"],
    )
    ep = serial_endpoint(pty_pair.a, baud=115200, echo=True, rate=10.0)
    line = start_line(ep, [driver("d", 1, "rs485", polling=0.01)], [var("x", "d", "holding", 0, "uint16")], bus)
    try:
        frames = drain_for(bus, 1.5)
    finally:
        line.stop()
    assert frames and all(f.q == "good" and f.value == 9 for f in frames)
    assert len(frames) <= 17  # 10 requests/s for 1.5 s (+1): the rate limit holds at 100 polls/s asked


def test_pause_skips_cycles(sim_factory, bus) -> None:
    sim = sim_factory({"units": [{"unit": 1}]})
    before = value("modbus_skipped_cycles_total", {"driver_id": "p"})
    bus.hold()
    line = start_line(
        tcp_endpoint(sim.port), [driver("p", 1, "plc", polling=0.05)], [var("x", "p", "holding", 0, "uint16")], bus
    )
    try:
        time.sleep(0.5)
        assert len(bus) == 0 and value("modbus_skipped_cycles_total", {"driver_id": "p"}) - before >= 3
        bus.release()
        assert collect(bus, 1)
    finally:
        line.stop()


def test_polls_a_genuine_pymodbus_server(bus) -> None:
    """Interop: the same line code against pymodbus' own Modbus/TCP server."""
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    block = ModbusSequentialDataBlock(0, [0] * 200)
    block.setValues(1 + 10, [0x4049, 0x0FDB])  # address 1 is register 0 in pymodbus' legacy blocks
    ctx = ModbusServerContext(devices={1: ModbusDeviceContext(hr=block)}, single=False)
    port = free_port()
    loop = asyncio.new_event_loop()
    holder: list[ModbusTcpServer] = []

    async def serve() -> None:
        holder.append(ModbusTcpServer(ctx, address=("127.0.0.1", port)))
        await holder[0].serve_forever()

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    line = start_line(
        tcp_endpoint(port), [driver("pm", 1, "plc", polling=0.2)], [var("pi", "pm", "holding", 10, "float32")], bus
    )
    try:
        frames = collect(bus, 1, pred=lambda f: f.q == "good")
        assert frames[0].value == pytest.approx(3.14159274)
    finally:
        line.stop()
        asyncio.run_coroutine_threadsafe(holder[0].shutdown(), loop).result(5)
        t.join(5)
