"""The plcsim OPC UA server (tools/plcsim/opcua_server.py) as a real process on 127.0.0.1, and the
OPC UA plugin's worker on a recording bus."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.core.driver import DeviceItem, EndpointItem, TagItem
from edge_gateway.core.frame import Frame
from edge_gateway.drivers.opcua import config
from edge_gateway.testkit import LOOPBACK, free_port

SERVER = Path(__file__).resolve().parents[3] / "tools/plcsim/opcua_server.py"
NS_URI = "urn:edge-gateway:plcsim"


class OpcuaSim:
    def __init__(
        self, port: int | None = None, user: str | None = None, cert_dir: Path | None = None, *extra: str
    ) -> None:
        self.port = port or free_port()
        self.user = user
        self.cert_dir = cert_dir
        self.extra = extra  # more command-line options (--bench N, --slow MS…)
        self.proc: subprocess.Popen[str] | None = None
        self.ns = 0
        self.control = 0  # the fault-injection control port (op())

    def start(self) -> OpcuaSim:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", LOOPBACK, "--port", str(self.port), "--period", "0.1",
             "--control", "0", *self.extra,
             *(["--user", self.user] if self.user else []),
             *(["--cert-dir", str(self.cert_dir)] if self.cert_dir else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        self.ns = int(line.split()[2])
        self.control = int(line.split()[3].removeprefix("control="))
        return self

    def op(self, **msg: Any) -> dict[str, Any]:
        """One fault-injection command: slow (ms), stop, start, stats."""
        with socket.create_connection((LOOPBACK, self.control), timeout=10) as s:
            s.sendall((json.dumps(msg) + "\n").encode())
            reply: dict[str, Any] = json.loads(s.makefile().readline())
        assert "error" not in reply, reply
        return reply

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def sim() -> Iterator[OpcuaSim]:
    s = OpcuaSim().start()
    try:
        yield s
    finally:
        s.stop()


class Bus:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._lock = threading.Lock()

    def publish(self, frames: list[Frame]) -> None:
        with self._lock:
            self.frames.extend(frames)

    def of(self, tag: str) -> list[Frame]:
        with self._lock:
            return [f for f in self.frames if f.tag == tag]

    def wait(self, pred: Callable[[Bus], bool], timeout: float = 20) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)


def endpoint(port: int, **opts: Any) -> EndpointItem:
    """The endpoint item of the plcsim server (`opts` as endpoints.yml writes them)."""
    return EndpointItem("ua1", "opc.tcp", LOOPBACK, port, config.build_endpoint({"timeout": 2, **opts}))


def device(**cfg: Any) -> DeviceItem:
    return DeviceItem("plc1", "static", "opcua", "ua1", config.build_cfg(cfg))


def tag(name: str, node: str, datatype: str, access: str = "R") -> TagItem:
    return TagItem(name, "plc1", access, datatype, config.build_address(datatype, {"node": node}))  # type: ignore[arg-type]
