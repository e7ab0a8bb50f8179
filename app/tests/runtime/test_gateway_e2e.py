"""End to end through the real `edge-gateway` process on the demo config: PLC simulator (Modbus/TCP +
RTU on a socat pty) → gateway → Mosquitto → an independent subscriber. Commands go the other way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.testkit import LOOPBACK, Mosquitto, PtyPair, free_port, stop_pid
from edge_gateway.uplink.consumer import BatchSubscriber

from ..acquisition.conftest import Sim

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TAGS = 16  # every tag of config/variables.yml
EXPECTED = {  # the static values of tools/plcsim/profiles/demo.yml, after scaling
    "plant.level_pct": 42.5,
    "plant.total_m3": 12345.678,
    "plant.batch_name": "BATCH-07",
    "plant.setpoint_c": 21.5,
    "plant.pump_on": True,
    "plant.alarm": False,
    "plant.pressure_bar": 2.5,
    "meter1.current_a": 12.5,
}


class Plant:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pty = PtyPair(tmp / "pty").start()
        import yaml

        profile = yaml.safe_load((ROOT / "tools/plcsim/profiles/demo.yml").read_text())
        self.sim = Sim(profile, tmp, tcp=True, rtu=[self.pty.b], baud=19200).start()
        self.broker = Mosquitto(workdir=tmp / "broker").start()
        self.cfg = tmp / "cfg"
        shutil.copytree(ROOT / "config", self.cfg, ignore=shutil.ignore_patterns("examples", "README.md"))
        self._edit("endpoints.yml", ("port: 15020", f"port: {self.sim.port}"), ("../build/demo/ttyGW", self.pty.a))
        self._edit("drivers.yml", *[("polling: 1s", "polling: 200ms")] * 3)
        self._edit(
            "connector.yml",
            ("tcp://127.0.0.1:18830", f"tcp://{LOOPBACK}:{self.broker.port}"),
            ("max_interval: 1s", "max_interval: 100ms"),
            ("{ base: 500ms, max: 2m }", "{ base: 100ms, max: 1s }"),
        )
        self._edit(
            "gateway.yml",
            ("../build/demo/wal", str(tmp / "wal")),
            ("../build/demo/control.sock", str(tmp / "control.sock")),
            ("127.0.0.1:9108", f"127.0.0.1:{free_port()}"),
        )
        self.gw: subprocess.Popen[bytes] | None = None

    def _edit(self, fname: str, *pairs: tuple[str, str]) -> None:
        p = self.cfg / fname
        text = p.read_text()
        for old, new in pairs:
            assert old in text, (fname, old)
            text = text.replace(old, new, 1)
        p.write_text(text)

    def start_gateway(self) -> None:
        log = open(self.tmp / "gateway.log", "ab")  # noqa: SIM115 - the child owns it
        self.gw = subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", "--config", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT
        )

    def committed(self) -> int:
        out = subprocess.run(
            [str(BIN / "edge-bus"), "--wal-dir", str(self.tmp / "wal"), "stats", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(json.loads(out.stdout)["committed_seq"])

    def stop(self) -> None:
        if self.gw is not None:
            stop_pid(self.gw)
        self.broker.stop()
        self.sim.stop()
        self.pty.stop()


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def latest(sub: BatchSubscriber) -> dict[str, dict[str, Any]]:
    return {f["tag"]: f for f in sub.frames()}


def no_gaps(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


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
