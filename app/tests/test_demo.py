"""`make demo` as a new user meets it: every command it suggests runs, as printed, from the repository root
(the first one used to be `mosquitto_pub`, which nothing installed: exit 127)."""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_gateway.testkit import LOOPBACK, stop_pid

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tools" / "demo.py"
PORTS = (18830, 15020, 14840, 10102, 9108)  # the demo's fixed ports: config/ points at them


class Output:
    """The demo's stdout, line by line, read on a thread so the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._q.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if re.search(pattern, line):
                return line
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"the demo did not print /{pattern}/ within {timeout:g}s:\n" + "\n".join(self.lines))


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_every_command_the_demo_suggests_works() -> None:
    if any(_taken(p) for p in PORTS):
        pytest.skip(f"another demo holds one of 127.0.0.1:{PORTS} on this machine")
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), "--seconds", "300"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = Output(proc)
        out.wait_for(r"^demo: try")
        out.wait_for(r"^\s+seq tag")
        start = out.lines.index(next(ln for ln in out.lines if ln.startswith("demo: try")))
        suggested = [
            ln.strip() for ln in out.lines[start + 1 :] if ln.startswith("      ") and not ln.strip().startswith("(")
        ]
        programs = [shlex.split(s)[0] for s in suggested]
        assert programs[:2] == [".venv/bin/edge-ctl", ".venv/bin/python"], suggested
        assert ("mosquitto_pub" in programs) == bool(shutil.which("mosquitto_pub"))
        assert shutil.which("mosquitto_pub"), "make venv installs mosquitto-clients: the third form is not tested"
        out.wait_for(r"^\s+\d+ plant\.setpoint_c\s+21\.5\s+good")  # values flow: the gateway polls and uplinks
        out.wait_for(r"^\s+\d+ ua\.setpoint\s+50\s+good")  # from the OPC UA simulator
        out.wait_for(r"^\s+\d+ s7\.label\s+hello s7\s+good")  # from the S7 simulator
        out.wait_for(r"^\s+\d+ ua\.setpoint\s+50\s+good")  # from the OPC UA simulator
        out.wait_for(r"^\s+\d+ s7\.label\s+hello s7\s+good")  # from the S7 simulator

        for line in suggested:
            argv = shlex.split(line)  # as a shell would split it; run without one
            done = _run(argv)
            assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
            if argv[0].endswith("edge-ctl"):
                assert "edge-gateway " in done.stdout and "plc1" in done.stdout, done.stdout
            elif argv[0].endswith("python"):
                assert re.search(r"^ack seq \d+ plant\.setpoint_c: ok$", done.stdout, re.M), done.stdout
            else:  # mosquitto_pub: the demo prints the gateway's ack
                out.wait_for(r"^demo: ack seq 1 plant\.setpoint_c: ok$", 30)
        out.wait_for(r"^\s+\d+ plant\.setpoint_c\s+23\.5\s+good", 30)  # the written value, polled back

        assert _run([sys.executable, str(DEMO), "--send", "plant.no_such_tag=1"]).returncode == 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the demo stops what it started, newest first
        try:
            proc.wait(30)
        finally:
            stop_pid(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0
