"""End to end through the real `edge-gateway` process on the demo config: PLC simulator (Modbus/TCP +
RTU on a socat pty) → gateway → Mosquitto → an independent subscriber. Commands go the other way."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from edge_gateway.testkit import LOOPBACK
from tests.consumer import BatchSubscriber

from .plant import EXPECTED, TAGS, Plant, latest, no_gaps


def test_every_tag_arrives_with_the_right_value_and_commands_round_trip(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        assert sub.wait_for(
            lambda s: len(latest(s)) == TAGS and all(f["q"] == "good" for f in latest(s).values()), 30
        ), (plant.tmp / "gateway.log").read_text()[-3000:]
        got = latest(sub)
        for tag, want in EXPECTED.items():
            assert got[tag]["value"] == pytest.approx(want), tag
        assert 228 <= got["meter2.voltage_v"]["value"] <= 234  # CDAB float from the second meter
        seqs = sub.seqs()
        assert no_gaps(seqs), "seq must have no gaps and no reordering"

        cmd = "/edge/demo/edge-01/cmd/"
        sub.publish(cmd + "plant.setpoint_c", json.dumps({"seq": 9001, "value": 23.5}).encode())
        sub.publish(cmd + "plant.flow_m3h", json.dumps({"seq": 9002, "value": 1}).encode())  # access R
        sub.publish(cmd + "plant.nope", json.dumps({"seq": 9003, "value": 1}).encode())  # unknown tag
        sub.publish(cmd + "plant.setpoint_c", json.dumps({"seq": 9004, "value": 1e9}).encode())  # out of range
        sub.publish(cmd + "plant.setpoint_c", b'{"seq": 9005, "value": ')  # malformed JSON
        sub.publish(
            cmd + "plant.pump_on",
            json.dumps({"seq": 9006, "value": False, "ttl": "5s", "ts": int(time.time() * 1000) - 60_000}).encode(),
        )
        assert sub.wait_for(lambda s: {"9001", "9002", "9003", "9004", "9006"} <= s.acks.keys(), 15), sub.acks
        assert sub.acks["9001"]["result"] == "ok"
        for refused in ("9002", "9003", "9004", "9006"):
            assert sub.acks[refused]["result"] == "fail" and sub.acks[refused]["error"], refused
        assert plant.sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 235
        assert plant.sim.ctl(op="get", unit=1, table="coil", addr=0)["value"] is True  # the expired write never ran
        assert sub.wait_for(lambda s: latest(s)["plant.setpoint_c"]["value"] == pytest.approx(23.5), 10)
    assert plant.gw is not None
    plant.gw.send_signal(signal.SIGTERM)
    assert plant.gw.wait(15) == 0


def test_sigkill_while_the_broker_is_down_loses_nothing_committed(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        assert sub.wait_for(lambda s: len(s.frames()) >= TAGS, 30)
        before = set(sub.seqs())
    plant.broker.stop()
    grown = plant.committed()
    deadline = time.monotonic() + 20
    while plant.committed() < grown + 3 * TAGS and time.monotonic() < deadline:
        time.sleep(0.1)  # the WAL grows while the uplink cannot deliver
    assert plant.gw is not None
    os.kill(plant.gw.pid, signal.SIGKILL)
    plant.gw.wait(10)
    committed = plant.committed()
    assert committed >= grown + 3 * TAGS
    plant.broker.start()
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        assert sub.wait_for(lambda s: set(range(1, committed + 1)) <= before | set(s.seqs()), 60), (
            f"missing {sorted(set(range(1, committed + 1)) - before - set(sub.seqs()))[:20]}"
        )
