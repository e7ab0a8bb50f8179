"""Supervisor against real threads and a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.metrics import REGISTRY
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
    monkeypatch.setenv("NOTIFY_SOCKET", sock.getsockname())
    sup = Supervisor(lambda: workers, lambda: "lines 1/1", Notifier(), status_every=0.2)
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


def restarts(worker: str) -> float:
    return REGISTRY.get_sample_value("supervisor_restart_total", {"worker": worker}) or 0.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_that_keeps_dying_ends_up_stopping_keepalives(notify_socket: socket.socket, monkeypatch) -> None:
    """The rule (supervisor.py docstring): restarted with backoff until `max_restarts` within the
    window are used up, then dead — keep-alives stop, so systemd restarts the service."""
    current = [Beater()]
    current[0].crash.set()
    current[0].start()

    def restart() -> None:
        current[0] = Beater()
        current[0].crash.set()  # dies again at once
        current[0].start()

    before = restarts("line:crashy")
    w = Watched("line:crashy", lambda: current[0], stale_after=5.0, restart=restart, max_restarts=3, backoff=0.01)
    sup = start([w], notify_socket, monkeypatch)
    deadline = time.monotonic() + 10
    while sup.problems != ["worker line:crashy is dead"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sup.problems == ["worker line:crashy is dead"]
    assert restarts("line:crashy") - before == 3
    drain(notify_socket)
    later = drain(notify_socket)
    assert not any("WATCHDOG=1" in m for m in later)
    assert any("DEGRADED worker line:crashy is dead" in m for m in later), later
    assert sup.is_alive()
    sup.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_restart_that_raises_does_not_end_the_supervisor(notify_socket: socket.socket, monkeypatch) -> None:
    w = Beater()
    w.crash.set()
    w.start()
    calls: list[float] = []

    def restart() -> None:
        calls.append(time.monotonic())
        raise OSError("cannot open the serial port")

    sup = start(
        [Watched("line:b", lambda: w, stale_after=5.0, restart=restart, max_restarts=2, backoff=0.01)],
        notify_socket,
        monkeypatch,
    )
    deadline = time.monotonic() + 10
    while sup.problems != ["worker line:b is dead"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sup.problems == ["worker line:b is dead"] and len(calls) == 2
    assert sup.is_alive()
    sup.stop()


def test_a_failing_check_is_a_problem_not_the_end_of_supervision(notify_socket: socket.socket, monkeypatch) -> None:
    broken = {"on": True}

    def workers() -> list[Watched]:
        if broken["on"]:
            raise KeyError("line:x")
        return []

    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    sup = Supervisor(workers, lambda: "lines 0/0", Notifier(), status_every=0.2)
    sup.start()
    deadline = time.monotonic() + 5
    while not sup.problems and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sup.problems and sup.problems[0].startswith("supervisor check failed: KeyError")
    assert not any("WATCHDOG=1" in m for m in drain(notify_socket))
    broken["on"] = False
    messages_until(notify_socket, "WATCHDOG=1")  # healthy again once the check passes
    sup.stop()


def test_notifier_reports_a_missing_notify_socket_instead_of_swallowing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="edge_gateway.runtime.supervisor"):
        n = Notifier()
    assert not n.enabled
    assert "nobody-listens" in caplog.text and "systemd will not hear from us" in caplog.text
    n.notify("READY=1")  # a no-op, not an error
