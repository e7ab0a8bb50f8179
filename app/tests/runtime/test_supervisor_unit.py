"""Supervisor against real threads and a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.runtime.supervisor import Notifier, Supervisor, Watched


class Beater(threading.Thread):
    """A worker that beats until told to hang or to crash."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.heartbeat = time.monotonic()
        self.hang = threading.Event()
        self.crash = threading.Event()
        self.quit = threading.Event()

    def run(self) -> None:
        while not self.quit.is_set():
            if self.crash.is_set():
                raise RuntimeError("boom")  # noqa: TRY002 - the crash under test
            if not self.hang.is_set():
                self.heartbeat = time.monotonic()
            time.sleep(0.01)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(5)
    yield s
    s.close()


def messages_until(sock: socket.socket, want: str, timeout: float = 5.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(want in m for m in got):
            return got
    raise AssertionError(f"{want!r} never arrived; got {got}")


def drain(sock: socket.socket, seconds: float = 0.6) -> list[str]:
    """Everything that arrives within `seconds`."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def start(workers: list[Watched], sock: socket.socket, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # keep-alive every 100 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sup = Supervisor(lambda: workers, lambda: "lines 1/1", Notifier(sock.getsockname()), status_every=0.2)
    sup.start()
    return sup


def test_ready_status_and_watchdog_while_healthy(notify_socket: socket.socket, monkeypatch) -> None:
    w = Beater()
    w.start()
    sup = start([Watched("line:a", lambda: w, stale_after=1.0)], notify_socket, monkeypatch)
    got = messages_until(notify_socket, "READY=1")
    assert any("STATUS=lines 1/1" in m for m in got)
    assert sum("WATCHDOG=1" in m for m in messages_until(notify_socket, "WATCHDOG=1")) >= 1
    sup.stop()
    w.quit.set()


def test_hung_worker_stops_keepalives(notify_socket: socket.socket, monkeypatch) -> None:
    w = Beater()
    w.start()
    sup = start([Watched("line:a", lambda: w, stale_after=0.3)], notify_socket, monkeypatch)
    messages_until(notify_socket, "WATCHDOG=1")
    w.hang.set()
    time.sleep(0.5)  # past stale_after
    drain(notify_socket)
    later = drain(notify_socket)
    assert not any("WATCHDOG=1" in m for m in later)
    assert any("DEGRADED worker line:a hung" in m for m in later)
    assert sup.problems and "line:a" in sup.problems[0]
    sup.stop()
    w.quit.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_crashed_restartable_worker_is_restarted(notify_socket: socket.socket, monkeypatch) -> None:
    current = [Beater()]
    current[0].start()

    def restart() -> None:
        current[0] = Beater()
        current[0].start()

    crashed = current[0]
    sup = start([Watched("line:a", lambda: current[0], stale_after=1.0, restart=restart)], notify_socket, monkeypatch)
    messages_until(notify_socket, "READY=1")
    crashed.crash.set()
    deadline = time.monotonic() + 5
    while current[0] is crashed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert current[0] is not crashed and current[0].is_alive()
    assert any("WATCHDOG=1" in m for m in drain(notify_socket))
    sup.stop()
    current[0].quit.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_unrestartable_worker_stops_keepalives(notify_socket: socket.socket, monkeypatch) -> None:
    w = Beater()
    w.start()
    sup = start([Watched("wal", lambda: w, stale_after=1.0)], notify_socket, monkeypatch)
    messages_until(notify_socket, "WATCHDOG=1")
    w.crash.set()
    w.join(2)
    drain(notify_socket)
    assert not any("WATCHDOG=1" in m for m in drain(notify_socket))
    assert sup.problems == ["worker wal is dead"]
    sup.stop()
