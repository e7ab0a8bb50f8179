"""The runner's wake-up (issue 15): a wake() that lands while the runner drains its wake socket must
not be lost, nor leave a flag up that suppresses every later wake-up.

The interleaving is forced, not hoped for: the wake socket's recv() is wrapped, and the first read
of the drain calls wake() from another thread (and lets it run for up to 0.3 s) before reading.
On the old Uplink (flag cleared before the drain, no lock) this left `_woken` set on an empty
socket: every later wake() was skipped and the select below slept its whole 2 s timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge_gateway.delivery.contract import Message, Poll
from edge_gateway.delivery.runner import Runner

from .fakes import connector


class IdleTransport:
    """Never connects, has no socket: the select waits on the waker alone."""

    kind = "idle"
    commands = False

    def bind(self, events: Any) -> None: ...
    def open(self) -> None: ...
    def publish(self, msg: Message) -> int:
        raise AssertionError("not connected")

    def reply(self, seq: int, payload: bytes) -> None: ...
    def poll(self) -> Poll:
        return Poll()

    def io(self, readable: bool, writable: bool) -> None: ...
    def abort(self, discard: bool = False) -> None: ...
    def close(self, deadline: float) -> None: ...
    def status(self) -> dict[str, Any]:
        return {}


class WakeFromAnotherThreadInsideRecv:
    """Stands in for the waker's read end: the first recv() first lets another thread call wake()."""

    def __init__(self, sock: Any, wake: Any) -> None:
        self.sock, self.wake, self.fired = sock, wake, False
        self.other_done = threading.Event()

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def recv(self, n: int) -> bytes:
        if not self.fired:
            self.fired = True

            def other() -> None:
                self.wake()
                self.other_done.set()

            threading.Thread(target=other, daemon=True).start()
            self.other_done.wait(0.3)  # the old code: done at once; the fixed one: blocked on the lock
        return bytes(self.sock.recv(n))

    def close(self) -> None:
        self.sock.close()


def test_a_wake_during_the_drain_is_not_lost_and_later_wakes_still_work() -> None:
    up = Runner(connector(), cursor=None, transport=IdleTransport())  # type: ignore[arg-type]
    w = up._waker
    hooked = WakeFromAnotherThreadInsideRecv(w._r, up.wake)
    w._r = hooked  # type: ignore[assignment]

    up.wake()  # a commit: one byte in the socket
    t0 = time.monotonic()
    up._io(2.0)  # readable → drain; inside it, another thread wakes us again
    assert time.monotonic() - t0 < 1.0
    assert hooked.fired
    assert hooked.other_done.wait(2.0)

    # the wake-up from inside the drain, or at least the next one, must end the next select at once
    up.wake()
    t0 = time.monotonic()
    up._io(2.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5, f"a wake() was swallowed: the select slept {elapsed:.2f}s"

    # and it keeps working: nothing pending → sleeps; a wake from another thread ends the sleep early
    threading.Timer(0.2, up.wake).start()
    t0 = time.monotonic()
    up._io(2.0)
    assert 0.1 < time.monotonic() - t0 < 1.0
    w.close()


def test_many_threads_waking_while_the_owner_drains_never_strand_a_wake() -> None:
    up = Runner(connector(), cursor=None, transport=IdleTransport())  # type: ignore[arg-type]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            up.wake()

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            up._io(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
    up._io(0.0)  # whatever is left is drained
    up.wake()  # the flag must not be stuck: this one is seen at once
    t0 = time.monotonic()
    up._io(2.0)
    assert time.monotonic() - t0 < 0.5
    up._waker.close()
