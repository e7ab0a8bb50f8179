"""Wake a thread that sleeps in select(): a socketpair and one flag, both under one lock.

Invariant (under `_lock`): `_pending` is True exactly when a byte is waiting in the socket.
`set()` (any thread) writes a byte only when none is waiting; `drain()` (the owner, after its
select) reads every byte and clears the flag in one step. The owner must drain *before* it looks
at the work it was woken for: a `set()` that finds a byte waiting happened before the drain, so its
work is seen by the look that follows; every later `set()` writes a new byte and ends the next select.

(The uplink's first version cleared the flag, then read the socket, without a lock: a `set()` in
between left the flag up on an empty socket for good, and every later wake-up was suppressed, so
new frames, command acks and stop() were only seen on the select timeout.)
"""

from __future__ import annotations

import socket
import threading


class Waker:
    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()
        self._pending = False

    def fileno(self) -> int:
        return self._r.fileno()

    @property
    def pending(self) -> bool:
        return self._pending

    def set(self) -> None:
        with self._lock:
            if self._pending:
                return
            try:
                self._w.send(b"!")
            except (BlockingIOError, OSError):
                return  # closed, or the buffer is full (then bytes are waiting anyway)
            self._pending = True

    def drain(self) -> None:
        with self._lock:
            try:
                while self._r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            self._pending = False

    def close(self) -> None:
        with self._lock:
            self._r.close()
            self._w.close()
