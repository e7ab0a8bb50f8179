"""The control socket on its own: JSON-lines requests, errors, permissions, stale sockets, tail."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.bus.frame import Frame, Kind
from edge_gateway.runtime.control import ControlError, ControlServer, TailHub, request

BIN = Path(sys.executable).parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(str(tmp_path / "run" / "control.sock"), TailHub(depth=4))
    srv.register("status", lambda req: {"revision": "abc"})
    srv.register("echo", lambda req: req.get("text"))

    def refuse(req: dict) -> None:
        raise ControlError("not now")

    srv.register("reload", refuse)
    srv.bind()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_requests_and_errors(server: ControlServer) -> None:
    assert request(server.path, "status") == {"ok": True, "result": {"revision": "abc"}}
    assert request(server.path, "echo", text="hi")["result"] == "hi"
    assert request(server.path, "reload") == {"ok": False, "error": "not now"}
    unknown = request(server.path, "frobnicate")
    assert not unknown["ok"] and "status" in unknown["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.sendall(b"not json\n" + b'{"cmd": "status"}\n')
        f = s.makefile("rb")
        assert not json.loads(f.readline())["ok"]
        assert json.loads(f.readline())["ok"]  # the connection survives a bad line


def test_socket_mode_and_stale_file(tmp_path: Path, server: ControlServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    second = ControlServer(server.path)
    with pytest.raises(OSError, match="another gateway"):
        second.bind()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: what a SIGKILLed gateway leaves
    third = ControlServer(str(stale))
    third.bind()
    third.start()
    assert request(str(stale), "nothing")["ok"] is False
    third.stop()
    assert not stale.exists()


def test_tail_streams_frames_and_reports_drops(server: ControlServer) -> None:
    hub = server.tail
    assert hub is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.settimeout(5)
        s.sendall(b'{"cmd": "tail"}\n')
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": True, "stream": "tail"}
        deadline = time.monotonic() + 5
        while hub.clients == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        hub.publish([Frame(1, 1700000000000, "a", 1.5), Frame(2, 1700000000001, "b", b"\x01", kind=Kind.CMD)])
        first, second = json.loads(f.readline()), json.loads(f.readline())
        assert first == {"seq": 1, "ts": 1700000000000, "tag": "a", "value": 1.5, "q": "good", "kind": "data"}
        assert second["value"] == {"b64": "AQ=="} and second["kind"] == "cmd"
        for i in range(20):  # more than the client's queue holds, faster than it is drained
            hub.publish([Frame(10 + i, 0, "x", i)])
        lines: list[dict] = []
        while sum(x.get("dropped", 0) + ("seq" in x) for x in lines) < 20:
            lines.append(json.loads(f.readline()))
        dropped = sum(x.get("dropped", 0) for x in lines)
        shown = [x["seq"] for x in lines if "seq" in x]
        assert dropped + len(shown) == 20 and shown == sorted(shown)
        f.close()  # the file object holds the socket open too
    deadline = time.monotonic() + 5
    while hub.clients and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.clients == 0  # the hung-up client was noticed and removed


def _connect_idle(path: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        out.append(s)
    return out


def _wait_eof(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sent before it closed the connection."""
    s.settimeout(timeout)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    return got


def test_hundred_idle_clients_do_not_lock_out_edge_ctl(server: ControlServer) -> None:
    idle = _connect_idle(server.path, 100)
    try:
        answer = subprocess.run(
            [str(BIN / "edge-ctl"), "--socket", server.path, "--json", "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == {"revision": "abc"}
        assert request(server.path, "echo", text="still")["result"] == "still"
        assert server.clients <= server.max_clients
        assert server.evicted >= 100 + 1 - server.max_clients  # edge-ctl took the 17th place
        # The oldest idle clients were the ones evicted: they see EOF (no refusal line), the newest survive.
        assert _wait_eof(idle[0]) == b""
        idle[-1].sendall(b'{"cmd": "status"}\n')
        idle[-1].settimeout(10)
        assert json.loads(idle[-1].makefile("rb").readline())["ok"]
    finally:
        for s in idle:
            s.close()


def test_an_idle_client_is_closed_after_the_read_timeout(tmp_path: Path) -> None:
    srv = ControlServer(str(tmp_path / "c.sock"), idle_timeout=0.3)
    srv.register("status", lambda req: "ok")
    srv.bind()
    srv.start()
    try:
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as half,
        ):
            silent.connect(srv.path)
            half.connect(srv.path)
            half.sendall(b'{"cmd": "sta')  # half a request line, then nothing
            assert _wait_eof(silent) == b""
            assert _wait_eof(half) == b""
        deadline = time.monotonic() + 10
        while srv.clients and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.clients == 0
        assert request(srv.path, "status")["result"] == "ok"
    finally:
        srv.stop()


def test_busy_clients_are_not_evicted_the_newcomer_is_refused(tmp_path: Path) -> None:
    hub = TailHub()
    srv = ControlServer(str(tmp_path / "c.sock"), hub, max_clients=2)
    srv.bind()
    srv.start()
    tails = _connect_idle(srv.path, 2)
    try:
        for s in tails:
            s.sendall(b'{"cmd": "tail"}\n')
            s.settimeout(10)
            assert s.recv(4096).startswith(b'{"ok":true,"stream":"tail"}')
        assert request(srv.path, "status") == {"ok": False, "error": "too many control clients"}
        assert srv.evicted == 0
    finally:
        for s in tails:
            s.close()
        srv.stop()
