"""A real snap7 server (tools/plcsim/s7_server.py) in a subprocess on 127.0.0.1, ended by its PID."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.testkit import LOOPBACK, free_port

SERVER = Path(__file__).resolve().parents[3] / "tools" / "plcsim" / "s7_server.py"


class S7Sim:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.control = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> S7Sim:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), "--control", str(self.control)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def op(self, **msg: Any) -> dict[str, Any]:
        with socket.create_connection((LOOPBACK, self.control), timeout=5) as s:
            s.sendall((json.dumps(msg) + "\n").encode())
            reply = s.makefile().readline()
        out: dict[str, Any] = json.loads(reply)
        return out

    def get(self, area: str, start: int, size: int, db: int = 0) -> bytes:
        return bytes.fromhex(self.op(op="get", area=area, db=db, start=start, size=size)["hex"])


@pytest.fixture
def s7sim() -> Iterator[S7Sim]:
    sim = S7Sim().start()
    try:
        yield sim
    finally:
        sim.stop()
