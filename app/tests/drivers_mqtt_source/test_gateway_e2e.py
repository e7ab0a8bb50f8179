"""End to end through the real `edge-gateway` process: devices publish on a local (source)
Mosquitto, the gateway maps them to tags, and they arrive upstream on a second (cloud) Mosquitto,
decoded by the reference consumer — with the MQTT context in each frame's meta. Then the source
broker goes away and comes back: the driver's health shows in `edge-ctl status` and in the
supervisor's STATUS (sd_notify), and values flow again."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid
from tests.consumer import BatchSubscriber

from .conftest import Publisher, wait_for

BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "examples" / "mqtt-source"


def _config(tmp_path: Path, source: Mosquitto, cloud: Mosquitto) -> Path:
    """The shipped example, pointed at the test's brokers, WAL, socket and metrics port."""
    d = tmp_path / "cfg"
    shutil.copytree(EXAMPLE, d)
    edits = {
        "endpoints.yml": (
            ("port: 18831", f"port: {source.port}"),
            ("{ base: 500ms, max: 30s }", "{ base: 100ms, max: 1s }"),
        ),
        "connector.yml": ("tcp://127.0.0.1:18830", f"tcp://{LOOPBACK}:{cloud.port}"),
        "gateway.yml": (
            ("../../../build/demo-mqtt/wal", str(tmp_path / "wal")),
            ("../../../build/demo-mqtt/control.sock", str(tmp_path / "control.sock")),
            ("127.0.0.1:9109", f"127.0.0.1:{free_port()}"),
        ),
    }
    for fname, pairs in edits.items():
        p = d / fname
        text = p.read_text()
        for old, new in pairs if isinstance(pairs[0], tuple) else (pairs,):  # type: ignore[misc]
            assert old in text, (fname, old)
            text = text.replace(old, new)
        p.write_text(text)
    return d


def _status(sock: Path) -> dict:
    out = subprocess.run(
        [str(BIN / "edge-ctl"), "--socket", str(sock), "--json", "status"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


class Notify:
    """The sd_notify socket systemd would give the service: collects its STATUS= lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.status: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return self.status
            self.status += [line[7:] for line in data.splitlines() if line.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()


def test_mqtt_devices_arrive_upstream_as_mapped_tags(tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    source, cloud = brokers
    cfg = _config(tmp_path, source, cloud)
    sock = tmp_path / "control.sock"
    log = (tmp_path / "gateway.log").open("wb")
    notify = Notify(tmp_path / "notify.sock")
    gw = subprocess.Popen(
        [str(BIN / "edge-gateway"), "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
    )
    try:
        with BatchSubscriber(LOOPBACK, cloud.port, filters=("/edge/demo/edge-01/batch",)) as sub:
            wait_for(lambda: sock.exists(), timeout=15, what="control socket")
            wait_for(lambda: _status(sock)["sources"]["local_broker"]["connected"], timeout=15, what="source connected")
            dev = Publisher(source.port)
            for i in range(20):
                dev.pub(f"sensors/{('oven', 'kiln')[i % 2]}/temp", f"{20 + i}.5")
            dev.pub("sensors/boiler/temp", "815")  # exact topic, scale value / 10
            dev.pub("sensors/r1/env", json.dumps({"sample": {"rh": 41, "t": 21.25}}))
            dev.pub("meters/hall/m7", (123456).to_bytes(4, "big"), qos=2)
            dev.pub("sensors/oven/temp", "not a number")
            dev.close()
            assert sub.wait_for(lambda s: len(s.frames()) >= 25, timeout=20), sub.frames()
            frames = [f for f in sub.frames() if not f["tag"].startswith("sys.")]
        by_tag: dict[str, list] = {}
        for f in frames:
            by_tag.setdefault(f["tag"], []).append(f["value"])
        assert by_tag["lab.oven.temp_c"] == [20.5 + i for i in range(0, 20, 2)] + [None]
        assert by_tag["lab.kiln.temp_c"] == [20.5 + i for i in range(1, 20, 2)]
        assert by_tag["lab.boiler.temp_c"] == [81.5]
        assert (by_tag["lab.r1.rh_pct"], by_tag["lab.r1.air_c"]) == ([41], [21.25])
        assert by_tag["meter.hall.m7.kwh"] == [123.456]
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        bad = [f for f in frames if f["value"] is None]
        assert [f["q"] for f in bad] == ["bad:malformed"]
        meter = next(f for f in frames if f["tag"] == "meter.hall.m7.kwh")
        assert meter["meta"] == {"topic": "meters/hall/m7", "qos": 2, "retain": False, "dup": False}
        st = _status(sock)["sources"]["local_broker"]
        assert st["drivers"]["lab_sensors"]["health"] == "ok"
        assert st["drivers"]["lab_sensors"]["malformed"] == 1
        human = subprocess.run(
            [str(BIN / "edge-ctl"), "--socket", str(sock), "status"], capture_output=True, text=True, check=True
        ).stdout
        assert "mqtt sources" in human and "lab_sensors" in human and "sensors/+/temp" in human
        wait_for(lambda: any(line.startswith("lines 0/0, mqtt 1/1,") for line in notify.poll()), what="STATUS ok")

        # the source broker goes away: health down, in edge-ctl and in STATUS; it comes back: values flow again
        source.stop()
        wait_for(lambda: _status(sock)["sources"]["local_broker"]["drivers"]["lab_sensors"]["health"] == "down")
        wait_for(lambda: any("lab_sensors down" in line for line in notify.poll()), what="STATUS down")
        source.start()
        wait_for(lambda: _status(sock)["sources"]["local_broker"]["connected"], timeout=15, what="reconnected")
        with BatchSubscriber(LOOPBACK, cloud.port, filters=("/edge/demo/edge-01/batch",)) as sub:
            dev = Publisher(source.port)
            dev.pub("sensors/oven/temp", "99.5")
            dev.close()
            assert sub.wait_for(lambda s: any(f["tag"] == "lab.oven.temp_c" for f in s.frames()), timeout=20)
            assert [f["value"] for f in sub.frames() if f["tag"] == "lab.oven.temp_c"] == [99.5]
        st = _status(sock)["sources"]["local_broker"]
        assert st["reconnects"] >= 1 and st["drivers"]["lab_sensors"]["health"] == "ok"
    finally:
        stop_pid(gw, timeout=20)
        log.close()
        notify.close()
    assert gw.returncode == 0, (tmp_path / "gateway.log").read_text()[-3000:]
