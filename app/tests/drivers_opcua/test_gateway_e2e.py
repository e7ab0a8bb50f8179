"""A real `edge-gateway run` with an OPC UA device on the plcsim server and a real Mosquitto: polled
and subscribed values reach the broker through the WAL, a Bad node is visible, an RW command is
written on the server and acked, a refused one never reaches it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port
from tests.consumer import BatchSubscriber

from .conftest import NS_URI, OpcuaSim

BIN = Path(sys.executable).parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(workdir=tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


def _config(d: Path, sim: OpcuaSim, broker_port: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    ns = sim.ns
    files = {
        "endpoints.yml": f"ua:\n  scheme: opc.tcp\n  host: {LOOPBACK}\n  port: {sim.port}\n  opts: {{ timeout: 2 }}\n",
        "drivers.yml": textwrap.dedent(
            f"""\
            plc:
              kind: static
              proto: opcua
              endpoint_id: ua
              cfg:
                polling: 100
                publishing_interval: 100
                subscriptions: [{{ node: "nsu={NS_URI};s=Temp", sample: 50 }}]
                enable_write: true
            """
        ),
        "variables.yml": textwrap.dedent(
            f"""\
            - {{ tag: ua.temp, driver_id: plc, datatype: double, address: {{ node: "nsu={NS_URI};s=Temp" }} }}
            - {{ tag: ua.faulty, driver_id: plc, datatype: double, address: {{ node: "ns={ns};s=Faulty" }} }}
            - {{ tag: ua.sp, driver_id: plc, datatype: double, access: RW, address: {{ node: "ns={ns};s=Setpoint" }} }}
            - {{ tag: ua.locked, driver_id: plc, datatype: double, access: RW,
                address: {{ node: "ns={ns};s=Locked" }} }}
            - {{ tag: ua.count, driver_id: plc, datatype: uint32, address: {{ node: "ns={ns};s=Counter" }} }}
            """
        ),
        "connector.yml": textwrap.dedent(
            f"""\
            cloud:
              kind: mqtt5
              endpoint: "tcp://{LOOPBACK}:{broker_port}"
              tenant: t
              device: d
              max_interval: 100ms
            """
        ),
        "gateway.yml": f"wal: {{ dir: {d / 'wal'} }}\ncontrol: {{ socket: {d / 'control.sock'} }}\n"
        f"metrics: {{ listen: 127.0.0.1:{free_port()} }}\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_opcua_through_a_real_gateway_and_broker(sim: OpcuaSim, broker: Mosquitto, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "cfg", sim, broker.port)
    lint = subprocess.run([str(BIN / "edge-cfg"), "lint", str(cfg)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    log_path = tmp_path / "gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    with BatchSubscriber(LOOPBACK, broker.port) as sub:
        gw = subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            tags = {"ua.temp", "ua.faulty", "ua.sp", "ua.locked", "ua.count"}
            assert sub.wait_for(lambda s: tags <= {f["tag"] for f in s.frames()}, 30), log_path.read_text()[-3000:]
            assert sub.wait_for(lambda s: len({f["value"] for f in s.frames() if f["tag"] == "ua.temp"}) >= 2, 15)
            assert sub.wait_for(
                lambda s: any(f["tag"] == "ua.faulty" and f.get("q") == "bad:BadSensorFailure" for f in s.frames()), 15
            ), [f for f in sub.frames() if f["tag"] == "ua.faulty"][:5]
            sub.publish("/edge/t/d/cmd/ua.sp", json.dumps({"seq": 1, "value": 61.5}).encode())
            sub.publish("/edge/t/d/cmd/ua.locked", json.dumps({"seq": 2, "value": 9.0}).encode())  # AccessLevel R
            sub.publish("/edge/t/d/cmd/ua.temp", json.dumps({"seq": 3, "value": 1.0}).encode())  # access R
            sub.publish("/edge/t/d/cmd/ua.sp", json.dumps({"seq": 4, "value": "hot"}).encode())  # wrong type
            assert sub.wait_for(lambda s: {"1", "2", "3", "4"} <= s.acks.keys(), 20), sub.acks
            assert sub.acks["1"]["result"] == "ok", sub.acks["1"]
            assert all(sub.acks[k]["result"] == "fail" for k in ("2", "3", "4")), sub.acks
            assert sub.wait_for(lambda s: any(f["tag"] == "ua.sp" and f["value"] == 61.5 for f in s.frames()), 15)
            st = subprocess.run(
                [str(BIN / "edge-ctl"), "--config", str(cfg), "--json", "status"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert st.returncode == 0, st.stderr
            line = json.loads(st.stdout)["lines"]["ua"]
            assert (
                line["alive"] and line["drivers"]["plc"]["state"] == "up" and line["drivers"]["plc"]["writes"] == 1
            ), line
            assert all(f["value"] == 1.0 for f in sub.frames() if f["tag"] == "ua.locked")
        finally:
            gw.send_signal(signal.SIGTERM)
            assert gw.wait(20) == 0, log_path.read_text()[-3000:]
