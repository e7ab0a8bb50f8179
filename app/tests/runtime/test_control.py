"""The control socket on its own: JSON-lines requests, errors, permissions, stale sockets, tail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.config.loader import load_snapshot
from edge_gateway.config.model import GatewayCfg
from edge_gateway.core.frame import Frame, Kind
from edge_gateway.metrics import CollectorRegistry, MetricsServer
from edge_gateway.runtime.control import ControlError, ControlServer, TailHub, request
from edge_gateway.testkit import LOOPBACK

from .plant import ROOT, Plant

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


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_idle_clients_exhaust_neither_the_control_socket_nor_metrics_of_a_real_gateway(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    assert plant.gw is not None
    baseline = _threads(plant.gw.pid)
    assert plant.metric("wal_committed_seq") >= 0  # /metrics answers before the flood
    idle_ctl = _connect_idle(plant.control, 100)
    idle_http: list[socket.socket] = []
    try:
        for _ in range(500):
            idle_http.append(socket.create_connection((LOOPBACK, plant.metrics_port), timeout=10))
        # Every connection is accepted (or queued) and sits idle; a scrape and edge-ctl still answer.
        assert "modbus_pdu_total" in _scrape(plant.metrics_port)
        answer = subprocess.run(
            [str(BIN / "edge-ctl"), "--socket", plant.control, "--json", "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert answer.returncode == 0, answer.stderr
        assert "revision" in json.loads(answer.stdout)
        # prometheus_client's server held a thread per idle connection here (~500); the selector holds none,
        # and the control socket at most one per slot.
        assert _threads(plant.gw.pid) <= baseline + 16 + 4
    finally:
        for s in idle_ctl + idle_http:
            s.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        return r.read().decode()


def test_metrics_server_one_thread_timeouts_and_eviction() -> None:
    srv = MetricsServer(LOOPBACK, 0, max_conns=8, timeout=0.3)
    srv.start()
    port = srv.address[1]
    threads = threading.active_count()
    try:
        idle = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(50)]
        assert "# HELP" in _scrape(port)
        assert threading.active_count() == threads
        assert srv.connections <= 8 and srv.evicted >= 50 - 8
        for s in idle:  # evicted or timed out: every idle connection is closed by the server
            assert _wait_eof(s) == b""
            s.close()
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            assert _wait_eof(s) == b""
        assert srv.timed_out >= 1
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
            head = _wait_eof(s)
            assert head.startswith(b"HTTP/1.0 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
            om = _wait_eof(s)
            assert b"Content-Type: application/openmetrics-text" in om and om.endswith(b"# EOF\n")
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"GET /secret HTTP/1.0\r\n\r\n")
            assert _wait_eof(s).startswith(b"HTTP/1.0 404")
    finally:
        srv.close()
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=2).close()


def test_metrics_listen_defaults_to_loopback(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    shutil.copytree(ROOT / "config", cfg, ignore=shutil.ignore_patterns("examples", "README.md"))
    assert (GatewayCfg().metrics_host, GatewayCfg().metrics_port) == ("127.0.0.1", 9100)
    (cfg / "gateway.yml").write_text("")  # an empty gateway.yml is valid: every default applies
    g = load_snapshot(str(cfg)).gateway
    assert (g.metrics_host, g.metrics_port) == ("127.0.0.1", 9100)
    (cfg / "gateway.yml").write_text("metrics: {}\n")
    assert load_snapshot(str(cfg)).gateway.metrics_host == "127.0.0.1"
    (cfg / "gateway.yml").unlink()
    assert load_snapshot(str(cfg)).gateway.metrics_host == "127.0.0.1"
    srv = MetricsServer(g.metrics_host, 0)
    try:
        assert srv.address[0] == "127.0.0.1"  # what the gateway binds for that config
    finally:
        srv.close()


def test_a_failing_collector_is_a_500_and_the_endpoint_stays_up() -> None:
    class Broken:
        def collect(self) -> list:  # type: ignore[type-arg]
            raise RuntimeError("sensor table gone")

    reg = CollectorRegistry()
    reg.register(Broken())  # type: ignore[arg-type]
    srv = MetricsServer(LOOPBACK, 0, registry=reg)
    srv.start()
    try:
        for _ in range(2):
            with socket.create_connection((LOOPBACK, srv.address[1]), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                assert _wait_eof(s).startswith(b"HTTP/1.0 500 ")
        assert srv.is_alive()
    finally:
        srv.close()
