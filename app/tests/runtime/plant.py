"""The demo plant for process-level tests: PLC simulator (Modbus/TCP + RTU on a socat pty), a private
Mosquitto, and the real `edge-gateway` process on a copy of config/ (ports, paths and polling rewritten),
optionally started as systemd would (NOTIFY_SOCKET)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_gateway.runtime.control import request
from edge_gateway.testkit import LOOPBACK, Mosquitto, PtyPair, free_port, stop_pid
from tests.consumer import BatchSubscriber

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
        self.control = str(tmp / "control.sock")
        self.metrics_port = free_port()
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
            ("127.0.0.1:9108", f"127.0.0.1:{self.metrics_port}"),
        )
        self.gw: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    def _edit(self, fname: str, *pairs: tuple[str, str]) -> None:
        p = self.cfg / fname
        text = p.read_text()
        for old, new in pairs:
            assert old in text, (fname, old)
            text = text.replace(old, new, 1)
        p.write_text(text)

    def edit(self, fname: str, *pairs: tuple[str, str], append: str = "") -> None:
        """Change a config file the way an editor or a deployment tool does: write aside, rename over."""
        p = self.cfg / fname
        text = p.read_text()
        for old, new in pairs:
            assert old in text, (fname, old)
            text = text.replace(old, new, 1)
        tmp = p.with_suffix(".tmp~")
        tmp.write_text(text + append)
        os.replace(tmp, p)

    def start_gateway(
        self, notify: bool = False, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        """With `notify`, the process runs as under systemd: a NOTIFY_SOCKET the test reads, a 1 s watchdog.
        `args`: instead of `--config` on the plant's directory (a configuration store's URL, say)."""
        penv = dict(os.environ, **(env or {}))
        if notify:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(self.tmp / "notify.sock"))
            penv.update(NOTIFY_SOCKET=str(self.tmp / "notify.sock"), WATCHDOG_USEC="1000000")
        log = open(self.tmp / "gateway.log", "ab")  # noqa: SIM115 - the child owns it
        self.gw = subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", *(args or ["--config", str(self.cfg)])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=penv,
        )

    def notifications(self, until: Callable[[list[str]], bool], timeout: float) -> list[str]:
        """sd_notify messages (one string each) until `until(messages)` holds or the deadline passes."""
        assert self.notify is not None
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The control socket answers once the gateway has started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.gw is not None and self.gw.poll() is None, self.log_tail()
            try:
                request(self.control, "status", 2.0)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the gateway did not start\n{self.log_tail()}")

    def ctl(self, cmd: str, **args: Any) -> Any:
        answer = request(self.control, cmd, 60.0, **args)
        assert answer["ok"], answer
        return answer["result"]

    def metric(self, name: str, labels: dict[str, str] | None = None, port: int | None = None) -> float:
        """One sample from the gateway's /metrics, as Prometheus would scrape it (0.0 when absent)."""
        url = f"http://{LOOPBACK}:{port or self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a loopback URL the test built
            text = r.read().decode()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_tail(self, n: int = 3000) -> str:
        p = self.tmp / "gateway.log"
        return p.read_text()[-n:] if p.exists() else ""

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
        if self.notify is not None:
            self.notify.close()
        self.broker.stop()
        self.sim.stop()
        self.pty.stop()


def latest(sub: BatchSubscriber) -> dict[str, dict[str, Any]]:
    return {f["tag"]: f for f in sub.frames()}


def no_gaps(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))
