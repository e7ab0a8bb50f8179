"""Real parts for tests, benchmarks and `make demo`: a Mosquitto broker and socat pty pairs.

Everything listens on 127.0.0.1 only, and every process started here is ended by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:`port` is in LISTEN state, without connecting: a probe connection to a
    forking server (socat `fork`) starts a child that competes with the real client for its device."""
    want = f"{socket.htonl(0x7F000001):08X}:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[1] == want and cols[3] == "0A":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")
        time.sleep(0.02)


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, by PID; reaps the child."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def require(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if not path:
        raise RuntimeError(f"{program} is not installed: run `make venv` (it installs it with apt-get)")
    return path


@dataclass
class Mosquitto:
    """A private Mosquitto on a free loopback port. `stop()`/`start()` simulate a broker outage
    on the same port; `extra` adds mosquitto.conf lines (e.g. `max_qos 1`)."""

    port: int = 0
    extra: list[str] = field(default_factory=list)
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="mosq-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"tcp://{LOOPBACK}:{self.port}"

    def start(self) -> Mosquitto:
        assert self.workdir is not None
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {LOOPBACK}",
                    "allow_anonymous true",
                    "persistence false",
                    "max_inflight_messages 1000",
                    "max_queued_messages 1000000",
                    "log_dest none",
                    *self.extra,
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [require("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PtyPair:
    """Two linked pseudo-terminals (socat), standing in for the two ends of an RS-485 line.
    ptys ignore baud and parity: wire timing is emulated by the PLC simulator."""

    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def a(self) -> str:
        return str(self.dir / "ttyA")

    @property
    def b(self) -> str:
        return str(self.dir / "ttyB")

    def start(self, timeout: float = 5.0) -> PtyPair:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [require("socat"), "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
