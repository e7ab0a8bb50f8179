"""The demo plant for process-level tests: the PLC simulators (Modbus/TCP + RTU on a pty pair, the OPC UA
server, the S7 server), a private Mosquitto, and the real `edge-gateway` process on a copy of config/
(ports, paths and polling rewritten), optionally started as systemd would (NOTIFY_SOCKET).

`Gateway` and `write_config` are the harness under it, for tests that bring their own endpoints, devices
and tags: a config directory around them (connector.yml on the test's broker, gateway.yml in the
directory) and the `edge-gateway run` process on it, ended by its PID."""

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

from ..drivers_modbus.conftest import Sim
from ..drivers_opcua.conftest import OpcuaSim
from ..drivers_s7.conftest import S7Sim

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TAGS = 24  # every tag of config/variables.yml: 16 Modbus, 3 OPC UA, 5 S7
EXPECTED = {  # the static values of tools/plcsim/profiles/demo.yml (after scaling) and of the OPC UA and S7 plants
    "plant.level_pct": 42.5,
    "plant.total_m3": 12345.678,
    "plant.batch_name": "BATCH-07",
    "plant.setpoint_c": 21.5,
    "plant.pump_on": True,
    "plant.alarm": False,
    "plant.pressure_bar": 2.5,
    "meter1.current_a": 12.5,
    "ua.setpoint": 50.0,
    "s7.label": "hello s7",
    "s7.setpoint_c": 21.5,
}


def write_config(d: Path, broker_port: int, **files: str) -> Path:
    """A config directory: the given files (`endpoints`, `drivers`, `variables`: YAML texts) plus a
    connector.yml on the test's broker (tenant `t`, device `d`: commands on /edge/t/d/cmd/TAG, batches
    at most 100 ms old) and a gateway.yml with the WAL, the control socket and a free /metrics port."""
    d.mkdir(parents=True, exist_ok=True)
    connector = (
        f'cloud:\n  kind: mqtt5\n  endpoint: "tcp://{LOOPBACK}:{broker_port}"\n'
        "  tenant: t\n  device: d\n  max_interval: 100ms\n"
    )
    gateway = (
        f"wal: {{ dir: {d / 'wal'} }}\ncontrol: {{ socket: {d / 'control.sock'} }}\n"
        f"metrics: {{ listen: 127.0.0.1:{free_port()} }}\n"
    )
    for name, text in {"connector": connector, "gateway": gateway, **files}.items():
        (d / f"{name}.yml").write_text(text)
    return d


class Gateway:
    """`edge-gateway run --config DIR` as a child process (its output in `log`), with the CLIs beside it."""

    def __init__(self, cfg: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.cfg, self.log, self.env = cfg, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def tool(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`edge-cfg lint`, `edge-ctl --config DIR --json status`…: run to completion, output captured."""
        if name == "edge-ctl":
            args = ("--config", str(self.cfg), "--json", *args)
        return subprocess.run(
            [str(BIN / name), *args], capture_output=True, text=True, env=self.env, timeout=60, check=False
        )

    def lint(self) -> None:
        r = self.tool("edge-cfg", "lint", str(self.cfg))
        assert r.returncode == 0, r.stdout + r.stderr

    def status(self) -> dict[str, Any]:
        r = self.tool("edge-ctl", "status")
        assert r.returncode == 0, r.stdout + r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def start(self, env: dict[str, str] | None = None, args: list[str] | None = None) -> Gateway:
        """`args`: instead of `--config` on the directory (a configuration store's URL, say)."""
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", *(args or ["--config", str(self.cfg)])],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or self.env,
        )
        out.close()
        return self

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as systemd stops it (killed if it does not end within `timeout`): its exit code."""
        if self.proc is None:
            return None
        stop_pid(self.proc, timeout)
        return self.proc.returncode


class Plant:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pty = PtyPair(tmp / "pty").start()
        import yaml

        profile = yaml.safe_load((ROOT / "tools/plcsim/profiles/demo.yml").read_text())
        self.sim = Sim(profile, tmp, tcp=True, rtu=[self.pty.b], baud=19200).start()
        self.ua = OpcuaSim().start()
        self.s7 = S7Sim().start()
        self.broker = Mosquitto(workdir=tmp / "broker").start()
        self.cfg = tmp / "cfg"
        self.control = str(tmp / "control.sock")
        self.metrics_port = free_port()
        shutil.copytree(ROOT / "config", self.cfg, ignore=shutil.ignore_patterns("examples", "README.md"))
        self._edit(
            "endpoints.yml",
            ("port: 15020", f"port: {self.sim.port}"),
            ("../build/demo/ttyGW", self.pty.a),
            ("port: 14840", f"port: {self.ua.port}"),
            ("port: 10102", f"port: {self.s7.port}"),
        )
        self._edit("drivers.yml", *[("polling: 1s", "polling: 200ms")] * 4, ("polling: 1000 ", "polling: 200 "))
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
        self.gateway = Gateway(self.cfg, tmp / "gateway.log")
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
        self.gateway.start(penv, args)

    @property
    def gw(self) -> subprocess.Popen[bytes] | None:
        return self.gateway.proc

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

    def drivers(self) -> dict[str, dict[str, Any]]:
        """device id → its `edge-ctl status` entry (state, polls, since_ms…), across every line."""
        lines = self.ctl("status")["lines"]
        return {d: entry for line in lines.values() for d, entry in line["drivers"].items()}

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
        return self.gateway.log_tail(n)

    def committed(self) -> int:
        out = subprocess.run(
            [str(BIN / "edge-bus"), "--wal-dir", str(self.tmp / "wal"), "stats", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(json.loads(out.stdout)["committed_seq"])

    def stop(self) -> None:
        self.gateway.stop()
        if self.notify is not None:
            self.notify.close()
        self.broker.stop()
        self.s7.stop()
        self.ua.stop()
        self.sim.stop()
        self.pty.stop()


def wait(predicate: Callable[[], Any], timeout: float, what: str, plant: Plant) -> None:
    """Until `predicate()` holds; fails with `what` and the gateway's log tail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{plant.log_tail()}")


def latest(sub: BatchSubscriber) -> dict[str, dict[str, Any]]:
    return {f["tag"]: f for f in sub.frames()}


def no_gaps(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))
