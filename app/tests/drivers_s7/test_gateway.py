"""A real `edge-gateway run` polls the snap7 server and delivers to a real Mosquitto through the WAL;
a cloud command on an RW tag is written on the server and acked; refused ones never reach it; a
hot reload of the S7 device restarts only its endpoint."""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

from edge_gateway.testkit import LOOPBACK, Mosquitto
from tests.consumer import BatchSubscriber
from tests.drivers_s7.conftest import S7Sim
from tests.runtime.plant import Gateway, write_config


def _config(d: Path, s7_port: int, broker_port: int) -> Path:
    return write_config(
        d,
        broker_port,
        endpoints=f"plc:\n  scheme: s7\n  host: {LOOPBACK}\n  port: {s7_port}\n  opts: {{ rack: 0, slot: 1 }}\n",
        drivers=textwrap.dedent(
            """\
            s7a: { kind: static, endpoint_id: plc, proto: s7, cfg: { polling: 100ms, enable_write: true } }
            s7ro: { kind: static, endpoint_id: plc, proto: s7, cfg: { polling: 200ms } }
            """
        ),
        variables=textwrap.dedent(
            """\
            - { tag: s7.counter, driver_id: s7a, datatype: int32, address: { area: DB, db: 10, start: 6 } }
            - { tag: s7.sp, driver_id: s7a, datatype: float32, access: RW, address: { area: DB, db: 10, start: 48 } }
            - { tag: s7.isp, driver_id: s7a, datatype: int16, access: RW, address: { area: DB, db: 10, start: 52 } }
            - { tag: s7.cmd, driver_id: s7a, datatype: bool, access: RW,
                address: { area: DB, db: 10, start: 54, bit: 2 } }
            - { tag: s7.label, driver_id: s7a, datatype: string, address: { area: DB, db: 10, start: 24, size: 22 } }
            - { tag: s7.iw, driver_id: s7ro, datatype: uint16, access: RW, address: { area: I, start: 2 } }
            """
        ),
    )


def test_s7_through_the_gateway(s7sim: S7Sim, mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw = Gateway(_config(tmp_path / "cfg", s7sim.port, mosquitto.port), tmp_path / "gateway.log")
    gw.lint()
    with BatchSubscriber(LOOPBACK, mosquitto.port) as sub:
        gw.start()
        try:
            tags = {"s7.counter", "s7.sp", "s7.isp", "s7.cmd", "s7.label", "s7.iw"}
            assert sub.wait_for(lambda s: tags <= {f["tag"] for f in s.frames() if f["q"] == "good"}, 30), gw.log_tail()
            got = {f["tag"]: f["value"] for f in sub.frames()}
            assert got["s7.sp"] == 21.5 and got["s7.label"] == "hello s7" and got["s7.iw"] == 4242
            sub.publish("/edge/t/d/cmd/s7.sp", json.dumps({"seq": 1, "value": 55.5}).encode())
            sub.publish("/edge/t/d/cmd/s7.cmd", json.dumps({"seq": 2, "value": True}).encode())
            sub.publish("/edge/t/d/cmd/s7.counter", json.dumps({"seq": 3, "value": 1}).encode())  # access R
            sub.publish("/edge/t/d/cmd/s7.isp", json.dumps({"seq": 4, "value": 70000}).encode())  # int16 range
            sub.publish("/edge/t/d/cmd/s7.iw", json.dumps({"seq": 5, "value": 1}).encode())  # enable_write off
            sub.publish("/edge/t/d/cmd/s7.isp", json.dumps({"seq": 6, "value": "x"}).encode())  # wrong type
            assert sub.wait_for(lambda s: {"1", "2", "3", "4", "5", "6"} <= s.acks.keys(), 20), sub.acks
            assert sub.acks["1"]["result"] == "ok" and sub.acks["2"]["result"] == "ok", sub.acks
            for seq, why in (("3", "access R"), ("4", "out of range"), ("5", "enable_write off"), ("6", "an integer")):
                assert sub.acks[seq]["result"] == "fail" and why in sub.acks[seq]["error"], sub.acks[seq]
            assert struct.unpack(">f", s7sim.get("DB", 48, 4, db=10))[0] == 55.5
            assert s7sim.get("DB", 54, 1, db=10) == b"\x04"
            assert struct.unpack(">h", s7sim.get("DB", 52, 2, db=10))[0] == 100  # the refused ones never reached it
            assert struct.unpack(">H", s7sim.get("I", 2, 2))[0] == 4242
            assert sub.wait_for(lambda s: any(f["tag"] == "s7.sp" and f["value"] == 55.5 for f in s.frames()), 10)
            line = gw.status()["lines"]["plc"]
            assert line["alive"] and line["drivers"]["s7a"]["state"] == "up", line
            assert line["drivers"]["s7a"]["requests_per_cycle"] == 1, line
            # Hot reload: a new tag on the S7 device restarts its endpoint with it.
            v = gw.cfg / "variables.yml"
            v.write_text(
                v.read_text() + "- { tag: s7.mw, driver_id: s7a, datatype: int16, address: { area: M, start: 2 } }\n"
            )
            r = gw.tool("edge-ctl", "reload")
            assert r.returncode == 0, r.stdout + r.stderr  # (the file watcher may have applied it first)
            assert sub.wait_for(lambda s: any(f["tag"] == "s7.mw" and f["value"] == 777 for f in s.frames()), 20)
        finally:
            assert gw.stop() == 0, gw.log_tail()
