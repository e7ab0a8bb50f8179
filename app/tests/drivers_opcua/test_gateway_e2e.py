"""A real `edge-gateway run` with an OPC UA device on the plcsim server and a real Mosquitto: polled
and subscribed values reach the broker through the WAL, a Bad node is visible, an RW command is
written on the server and acked, a refused one never reaches it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from edge_gateway.testkit import LOOPBACK, Mosquitto
from tests.consumer import BatchSubscriber
from tests.runtime.plant import Gateway, write_config

from .conftest import NS_URI, OpcuaSim


def _config(d: Path, sim: OpcuaSim, broker_port: int) -> Path:
    ns = sim.ns
    return write_config(
        d,
        broker_port,
        endpoints=f"ua:\n  scheme: opc.tcp\n  host: {LOOPBACK}\n  port: {sim.port}\n  opts: {{ timeout: 2 }}\n",
        drivers=textwrap.dedent(
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
        variables=textwrap.dedent(
            f"""\
            - {{ tag: ua.temp, driver_id: plc, datatype: double, address: {{ node: "nsu={NS_URI};s=Temp" }} }}
            - {{ tag: ua.faulty, driver_id: plc, datatype: double, address: {{ node: "ns={ns};s=Faulty" }} }}
            - {{ tag: ua.sp, driver_id: plc, datatype: double, access: RW, address: {{ node: "ns={ns};s=Setpoint" }} }}
            - {{ tag: ua.locked, driver_id: plc, datatype: double, access: RW,
                address: {{ node: "ns={ns};s=Locked" }} }}
            - {{ tag: ua.count, driver_id: plc, datatype: uint32, address: {{ node: "ns={ns};s=Counter" }} }}
            """
        ),
    )


def test_opcua_through_a_real_gateway_and_broker(sim: OpcuaSim, mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw = Gateway(_config(tmp_path / "cfg", sim, mosquitto.port), tmp_path / "gateway.log")
    gw.lint()
    with BatchSubscriber(LOOPBACK, mosquitto.port) as sub:
        gw.start()
        try:
            tags = {"ua.temp", "ua.faulty", "ua.sp", "ua.locked", "ua.count"}
            assert sub.wait_for(lambda s: tags <= {f["tag"] for f in s.frames()}, 30), gw.log_tail()
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
            line = gw.status()["lines"]["ua"]
            assert (
                line["alive"] and line["drivers"]["plc"]["state"] == "up" and line["drivers"]["plc"]["writes"] == 1
            ), line
            assert all(f["value"] == 1.0 for f in sub.frames() if f["tag"] == "ua.locked")
        finally:
            assert gw.stop() == 0, gw.log_tail()
