"""The test rig: PLC simulator (or real hardware), a Mosquitto broker, the real `edge-gateway` process
run as systemd runs it, and an independent subscriber that checks what reaches the cloud side.

The gateway gets a generated config directory, a NOTIFY_SOCKET the rig reads (start = READY=1,
stop = SIGTERM → STOPPING=1 → exit 0) and WATCHDOG_USEC, so the supervisor runs as on the board.
The broker keeps sessions on disk and the subscriber has a persistent session, so a broker outage
or restart loses nothing on the cloud side either: any missing seq is the gateway's fault.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))

from edge_gateway.runtime.control import request
from edge_gateway.testkit import LOOPBACK, Mosquitto, PtyPair, free_port, stop_pid
from tests.consumer import BatchSubscriber, Message

BIN = Path(sys.executable).parent
PLCSIM = ROOT / "tools" / "plcsim" / "plcsim.py"


@dataclass
class Hardware:
    """`--serial` / `--plc` from the command line: real devices instead of the simulator."""

    serial: str | None = None
    plc: str | None = None
    unit: int = 1
    baud: int = 19200
    parity: str = "E"

    @property
    def real(self) -> bool:
        return bool(self.serial or self.plc)


def raw(unit: int, addr: int) -> int:
    """The value the simulator holds in holding register `addr` of `unit` (a test knows it in advance)."""
    return (unit * 1000 + addr * 7) % 65536


class Simulator:
    """tools/plcsim as a subprocess; `restart()` keeps the TCP port (a PLC unplugged and back)."""

    def __init__(
        self,
        profile: dict[str, Any],
        workdir: Path,
        rtu: str | None = None,
        baud: int = 19200,
    ) -> None:
        self.profile = workdir / "profile.yml"
        self.profile.write_text(yaml.safe_dump(profile))
        self.rtu, self.baud = rtu, baud
        self.port = 0
        self.control_port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Simulator:
        args = [
            sys.executable,
            str(PLCSIM),
            str(self.profile),
            "--baud",
            str(self.baud),
            "--tcp",
            str(self.port),
        ]
        if self.rtu:
            args += ["--rtu", self.rtu]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        fields = dict(kv.split("=") for kv in line.split()[1:])
        self.port, self.control_port = int(fields["tcp"]), int(fields["control"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)  # type: ignore[arg-type]
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, **req: Any) -> Any:
        with (
            socket.create_connection((LOOPBACK, self.control_port), timeout=5) as s,
            s.makefile("rw") as f,
        ):
            f.write(json.dumps(req) + "\n")
            f.flush()
            return json.loads(f.readline())


class Ledger:
    """What the cloud side received: every seq (duplicates allowed, gaps not) and the last value per tag.
    Holds ranges, not frames, so a 10-minute soak at 5 k frames/s stays small."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames = 0  # data frames received
        self.duplicates = (
            0  # seqs received more than once (allowed after a crash: at least once)
        )
        self.high = 0  # highest seq seen
        self.holes: set[int] = set()  # seqs below `high` not seen yet
        self.latest: dict[str, dict[str, Any]] = {}
        self.wrong: list[str] = []  # values that differ from what the device holds
        self.expect: Callable[[dict[str, Any]], Any] | None = None
        self._last: Message | None = None

    def add(self, f: dict[str, Any], m: Message | None = None) -> None:
        """One decoded frame. A batch accounts for its whole `cover` range (user property
        "first-last"): commands logged in the WAL for audit are inside it but never sent."""
        seq = int(f["seq"])
        with self.lock:
            self.frames += 1
            if m is None:
                self._cover(seq, seq)
            elif m is not self._last:
                self._last = m
                first, _, last = m.props.get("cover", f"{seq}-{seq}").partition("-")
                self._cover(int(first), int(last))
            self.latest[f["tag"]] = f
            if self.expect is not None and f.get("q") == "good":
                want = self.expect(f)
                if want is not None and f["value"] != want and len(self.wrong) < 20:
                    self.wrong.append(
                        f"{f['tag']} seq {seq}: {f['value']!r} != {want!r}"
                    )

    def _cover(self, lo: int, hi: int) -> None:
        for seq in range(lo, hi + 1):
            if seq > self.high:
                self.holes.update(range(self.high + 1, seq))
                self.high = seq
            elif seq in self.holes:
                self.holes.discard(seq)
            else:
                self.duplicates += 1

    def complete_through(self, seq: int) -> bool:
        with self.lock:
            return self.high >= seq and not any(s <= seq for s in self.holes)

    def missing(self, through: int | None = None) -> list[int]:
        with self.lock:
            top = self.high if through is None else through
            return (
                sorted(s for s in self.holes if s <= top)[:20]
                + list(range(self.high + 1, top + 1))[:20]
            )


@dataclass
class Rig:
    tmp: Path
    hw: Hardware = field(default_factory=Hardware)
    broker: Mosquitto = field(init=False)
    sim: Simulator | None = None
    pty: PtyPair | None = None
    gw: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    sub: BatchSubscriber | None = None
    ledger: Ledger = field(default_factory=Ledger)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cfg = self.tmp / "cfg"
        self.cfg.mkdir()
        self.wal = self.tmp / "wal"
        self.control = str(self.tmp / "control.sock")
        self.metrics_port = free_port()
        (self.tmp / "broker").mkdir()
        self.broker = Mosquitto(
            workdir=self.tmp / "broker",
            extra=[
                "persistence true",
                "user root",  # the private temp dir is root-only; mosquitto would drop to its own user
                f"persistence_location {self.tmp / 'broker'}/",
                "autosave_interval 1",
            ],
        ).start()

    # -- devices -------------------------------------------------------------------------------------------
    def simulate(
        self,
        tcp_units: dict[int, int],
        rtu_units: dict[int, int] | None = None,
        baud: int = 19200,
    ) -> None:
        """A simulator with `tcp_units` {unit: registers} on TCP and `rtu_units` on a pty pair."""

        def unit(u: int, n: int) -> dict[str, Any]:
            return {
                "unit": u,
                "points": [
                    {
                        "table": "holding",
                        "addr": a,
                        "type": "uint16",
                        "value": raw(u, a),
                    }
                    for a in range(n)
                ],
            }

        profile: dict[str, Any] = {"units": [unit(u, n) for u, n in tcp_units.items()]}
        rtu = None
        if rtu_units:
            self.pty = PtyPair(self.tmp / "pty").start()
            profile["rtu_units"] = [unit(u, n) for u, n in rtu_units.items()]
            rtu = self.pty.b
        self.sim = Simulator(profile, self.tmp, rtu=rtu, baud=baud).start()

    def tcp_endpoint(self) -> dict[str, Any]:
        if self.hw.plc:
            host, port = self.hw.plc.rsplit(":", 1)
            return {
                "scheme": "tcp",
                "host": host,
                "port": int(port),
                "opts": {"timeout": "1000ms"},
            }
        assert self.sim is not None
        return {
            "scheme": "tcp",
            "host": LOOPBACK,
            "port": self.sim.port,
            "opts": {"timeout": "500ms"},
        }

    def serial_endpoint(self, timeout: str = "200ms") -> dict[str, Any]:
        path = self.hw.serial or (self.pty.a if self.pty else None)
        assert path, "no serial line: give --serial or simulate rtu_units"
        parity = (
            self.hw.parity if self.hw.serial else "N"
        )  # ptys ignore parity; N lets a pty be reopened
        opts = {
            "baud": self.hw.baud,
            "parity": parity,
            "timeout": timeout,
            "rs485": "none" if not self.hw.serial else "kernel",
        }
        return {"scheme": "serial", "host": path, "opts": opts}

    # -- configuration -----------------------------------------------------------------------------------------
    def configure(
        self,
        endpoints: dict[str, Any],
        drivers: dict[str, Any],
        variables: list[dict[str, Any]],
        wal: dict[str, Any] | None = None,
        connector: dict[str, Any] | None = None,
    ) -> None:
        conn = {
            "kind": "mqtt5",
            "endpoint": self.broker.url,
            "client_id": "hil-edge",
            "tenant": "hil",
            "device": "edge",
            "qos": 2,
            "batch": 256,
            "max_interval": "100ms",
            "compression": "zstd",
            "backoff": {"base": "100ms", "max": "1s"},
            **(connector or {}),
        }
        gateway = {
            "bus": {"capacity": 65536},
            "wal": {"dir": str(self.wal), "flush_ms": 50, **(wal or {})},
            "metrics": {"listen": f"{LOOPBACK}:{self.metrics_port}"},
            "control": {"socket": self.control},
        }
        for name, doc in (
            ("endpoints.yml", endpoints),
            ("drivers.yml", drivers),
            ("variables.yml", variables),
            ("connector.yml", {"cloud": conn}),
            ("gateway.yml", gateway),
        ):
            self.write(name, doc)

    def write(self, name: str, doc: Any) -> None:
        """Atomic replace, as a deployment tool writes config (the gateway may be watching)."""
        tmp = self.cfg / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.cfg / name)

    def read(self, name: str) -> Any:
        return yaml.safe_load((self.cfg / name).read_text())

    # -- the cloud side ---------------------------------------------------------------------------------------
    def subscribe(self) -> BatchSubscriber:
        self.sub = BatchSubscriber(
            LOOPBACK,
            self.broker.port,
            client_id="hil-cloud",
            session_expiry=3600,
            on_frame=self.ledger.add,
            keep=False,
        ).start()
        return self.sub

    # -- the gateway ------------------------------------------------------------------------------------------
    def start_gateway(self, timeout: float = 30.0) -> list[str]:
        """Start as systemd would and wait for READY=1; returns the notifications up to it."""
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(self.tmp / "notify.sock"))
            threading.Thread(
                target=self._listen, args=(self.notify,), daemon=True
            ).start()
        mark = len(self.notes)
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(self.tmp / "notify.sock"),
            WATCHDOG_USEC="2000000",
        )
        log = open(self.tmp / "gateway.log", "ab")  # noqa: SIM115 - the child owns it
        self.gw = subprocess.Popen(
            [
                str(BIN / "edge-gateway"),
                "run",
                "--config",
                str(self.cfg),
                "--log-format",
                "text",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        got = self.notifications(mark, "READY=1", timeout)
        assert any("READY=1" in m for m in got), (
            f"no READY=1 within {timeout}s\n{self.log_tail()}"
        )
        return got

    def stop_gateway(self) -> None:
        """SIGTERM: STOPPING=1 and exit 0, with everything committed."""
        assert self.gw is not None
        mark = len(self.notes)
        self.gw.send_signal(signal.SIGTERM)
        assert self.gw.wait(20) == 0, self.log_tail()
        got = self.notifications(mark, "STOPPING=1", 5)
        assert any("STOPPING=1" in m for m in got), got
        self.gw = None

    def kill_gateway(self) -> None:
        """Power cut: SIGKILL, nothing flushed, nothing said."""
        assert self.gw is not None
        os.kill(self.gw.pid, signal.SIGKILL)
        self.gw.wait(10)
        self.gw = None

    def _listen(self, sock: socket.socket) -> None:
        """Read NOTIFY_SOCKET all the time, as systemd does (an unread queue would fill up)."""
        while True:
            try:
                self.notes.append(sock.recv(4096).decode())
            except OSError:
                return

    def notifications(self, since: int, what: str, timeout: float) -> list[str]:
        """Notifications after index `since`, once one contains `what` (or at the deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(
            what in m for m in self.notes[since:]
        ):
            time.sleep(0.05)
        return self.notes[since:]

    def ctl(self, cmd: str, **args: Any) -> Any:
        answer = request(self.control, cmd, 60.0, **args)
        assert answer["ok"], answer
        return answer["result"]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        with urllib.request.urlopen(
            f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        want = name + (
            "{"
            + ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
            + "}"
            if labels
            else ""
        )
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wal_stats(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN / "edge-bus"), "--wal-dir", str(self.wal), "stats", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def committed(self) -> int:
        return int(self.wal_stats()["committed_seq"])

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}"
        )

    def delivered_through(self, seq: int, timeout: float) -> None:
        """Every seq from 1 to `seq` reached the subscriber (duplicates allowed)."""
        self.wait(
            lambda: self.ledger.complete_through(seq),
            timeout,
            f"delivery through seq {seq}: missing {self.ledger.missing(seq)}",
        )

    def log_tail(self, n: int = 4000) -> str:
        p = self.tmp / "gateway.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def close(self) -> None:
        if self.gw is not None:
            stop_pid(self.gw)  # type: ignore[arg-type]
        if self.sub is not None:
            self.sub.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.pty is not None:
            self.pty.stop()
        self.broker.stop()
        if self.notify is not None:
            self.notify.close()


def holding_unit(
    prefix: str, driver: str, n: int, start: int = 0
) -> list[dict[str, Any]]:
    """`n` uint16 holding registers of one driver as tags `<prefix>.r<addr>`."""
    return [
        {
            "tag": f"{prefix}.r{a}",
            "driver_id": driver,
            "address": {"type": "holding", "addr": a},
            "datatype": "uint16",
        }
        for a in range(start, start + n)
    ]


def expect_raw(units: dict[str, int]) -> Callable[[dict[str, Any]], Any]:
    """Expected value of a frame from its tag `<prefix>.r<addr>`, given prefix → unit id."""

    def want(f: dict[str, Any]) -> Any:
        prefix, _, reg = f["tag"].rpartition(".r")
        return (
            raw(units[prefix], int(reg)) if prefix in units and reg.isdigit() else None
        )

    return want
