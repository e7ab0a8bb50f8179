"""The MQTT source keeps its broker session across a restart of the real `edge-gateway` process
(issue 14: 8): QoS 1 messages the devices publish while the gateway is stopped are queued by the
source broker for our session and arrive upstream after the restart, and a subscription removed
from drivers.yml meanwhile is unsubscribed from the resumed session (nothing arrives through it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from edge_gateway.testkit import LOOPBACK, Mosquitto, stop_pid
from tests.consumer import BatchSubscriber

from .conftest import Publisher, wait_for
from .test_gateway_e2e import BIN, _config, _status


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        out.close()


def _stop(gw: subprocess.Popen[bytes], log: Path) -> None:
    stop_pid(gw, timeout=20)
    assert gw.returncode == 0, log.read_text()[-3000:]


def test_messages_published_while_the_gateway_restarts_arrive_and_removed_filters_are_unsubscribed(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]
) -> None:
    source, cloud = brokers
    cfg = _config(tmp_path, source, cloud)
    sock, log = tmp_path / "control.sock", tmp_path / "gateway.log"
    state = tmp_path / "wal" / "sessions" / "source-local_broker.json"

    def granted() -> list[int | None]:
        drivers = _status(sock)["sources"]["local_broker"]["drivers"].values()
        return [s["granted"] for d in drivers for s in d["subscriptions"]]

    def subscribed() -> set[str]:
        return set(json.loads(state.read_text())["subs"]) if state.exists() else set()

    gw = _start(cfg, log)
    try:
        wait_for(lambda: sock.exists(), timeout=15, what="control socket")
        wait_for(lambda: None not in granted(), timeout=15, what="SUBACKs")
        assert _status(sock)["sources"]["local_broker"]["session"] == "new"
    finally:
        _stop(gw, log)

    dev = Publisher(source.port)
    for i in range(100):
        dev.pub("sensors/oven/temp", f"{i}.5", qos=1)
    text = (cfg / "drivers.yml").read_text()
    drop = '      - { filter: "sensors/+/env", qos: 1 }\n'
    assert drop in text
    (cfg / "drivers.yml").write_text(text.replace(drop, ""))
    tags = yaml.safe_load((cfg / "variables.yml").read_text())
    (cfg / "variables.yml").write_text(yaml.safe_dump([t for t in tags if t["topic"] != "sensors/+/env"]))
    with BatchSubscriber(LOOPBACK, cloud.port, filters=("/edge/demo/edge-01/batch",)) as sub:
        gw = _start(cfg, log)
        try:

            def oven() -> list[float]:
                return [f["value"] for f in sub.frames() if f["tag"] == "lab.oven.temp_c"]

            assert sub.wait_for(lambda s: len(oven()) >= 100, timeout=30), (len(oven()), log.read_text()[-3000:])
            assert oven()[:100] == [i + 0.5 for i in range(100)]  # all of them, in order
            st = _status(sock)["sources"]["local_broker"]
            assert st["session"] == "resumed"
            wait_for(lambda: subscribed() == {"sensors/+/temp", "meters/#"}, timeout=15, what="UNSUBACK")
            dev.pub("sensors/r1/env", json.dumps({"sample": {"rh": 41, "t": 21.25}}), qos=1)
            dev.pub("sensors/oven/temp", "500.5", qos=1)  # after the env message, on a kept subscription
            assert sub.wait_for(lambda s: 500.5 in oven(), timeout=20)
            st = _status(sock)["sources"]["local_broker"]
            assert st["stray"] == 0 and st["drivers"]["lab_sensors"]["received"] == 101
            assert not [f for f in sub.frames() if f["tag"].startswith("lab.r1.")]
        finally:
            dev.close()
            _stop(gw, log)
    assert os.path.exists(state)
