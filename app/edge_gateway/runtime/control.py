"""The control socket: `edge-ctl` talks to a running gateway over a local AF_UNIX stream socket.

Protocol: JSON lines. The client sends one request object per line, `{"cmd": "status"}`, and gets one
response line, `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}`. `{"cmd": "tail"}` turns
the connection into a stream: `{"ok": true, "stream": "tail"}`, then one line per committed frame
(`{"seq","ts","tag","value","q","kind"}`, bytes as `{"b64": …}`) until the client hangs up; a client
too slow to keep up gets `{"dropped": N}` lines instead of stalling the WAL writer.

The socket is created 0660 (owner and group: the service user and its admins), and a stale socket
file left by a killed gateway is replaced, while a live one is refused. Commands are registered by
name (`register("reload", fn)`), so later subsystems add theirs without touching this module.

Idle clients cannot lock `edge-ctl` out: a client that sends nothing for IDLE_TIMEOUT seconds is
closed, and when MAX_CLIENTS are connected a new client evicts the one idle the longest (a client
waiting for its next request line, not one whose command is running or a `tail` stream). Only when
every slot is busy is the new client refused.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.bus.record import Run
from edge_gateway.core.frame import Frame
from edge_gateway.delivery.codec import json_value

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]
MAX_CLIENTS = 16
MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 10.0  # seconds a client may wait between request lines (or within one) before it is closed


class ControlError(Exception):
    """A request the gateway refuses; the message goes back to the client."""


class TailHub:
    """Fans committed frames out to `tail` clients. `publish` runs on the WAL writer thread after
    every commit, so it only hands batches to bounded per-client queues and never waits."""

    def __init__(self, depth: int = 1024) -> None:
        self._subs: list[queue.Queue[list[Frame]]] = []
        self._dropped: dict[int, int] = {}
        self._lock = threading.Lock()
        self.depth = depth

    def publish_runs(self, runs: list[Run]) -> None:
        """The WAL writer's listener: the runs just committed, decoded only while someone tails."""
        if self._subs:
            self.publish([f for r in runs for f in r.frames()])

    def publish(self, frames: list[Frame]) -> None:
        if not self._subs:
            return
        with self._lock:
            for q in self._subs:
                try:
                    q.put_nowait(frames)
                except queue.Full:
                    self._dropped[id(q)] = self._dropped.get(id(q), 0) + len(frames)

    def subscribe(self) -> queue.Queue[list[Frame]]:
        q: queue.Queue[list[Frame]] = queue.Queue(self.depth)
        with self._lock:
            self._subs = [*self._subs, q]
        return q

    def unsubscribe(self, q: queue.Queue[list[Frame]]) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not q]
            self._dropped.pop(id(q), None)

    def take_dropped(self, q: queue.Queue[list[Frame]]) -> int:
        with self._lock:
            return self._dropped.pop(id(q), 0)

    @property
    def clients(self) -> int:
        return len(self._subs)


def frame_line(f: Frame) -> dict[str, Any]:
    d: dict[str, Any] = {
        "seq": f.seq,
        "ts": f.ts,
        "tag": f.tag,
        "value": json_value(f.value),
        "q": f.q,
        "kind": f.kind.name.lower(),
    }
    if f.meta:
        d["meta"] = f.meta
    return d


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, default=_default, separators=(",", ":")) + "\n").encode()


def _default(o: object) -> object:
    if isinstance(o, bytes):
        return json_value(o)
    return str(o)


@dataclass
class _Client:
    """One connection's slot. `idle_since` is set while the client thread waits for a request line."""

    conn: socket.socket
    idle_since: float | None = field(default_factory=time.monotonic)


class ControlServer(threading.Thread):
    def __init__(
        self,
        path: str,
        tail: TailHub | None = None,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        super().__init__(name="control", daemon=True)
        self.path = path
        self.tail = tail
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.evicted = 0  # idle clients closed to make room for a new one
        self._handlers: dict[str, Handler] = {}
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._clients: dict[socket.socket, _Client] = {}
        self._lock = threading.Lock()

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    @property
    def commands(self) -> list[str]:
        return sorted([*self._handlers, *(["tail"] if self.tail else [])])

    # -- lifecycle ---------------------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the socket (before `start()`, so a clash fails the gateway's start, loudly)."""
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise OSError(f"control socket path {p} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(p))
            except (ConnectionRefusedError, FileNotFoundError):
                p.unlink(missing_ok=True)  # left behind by a gateway that was killed
            else:
                raise OSError(f"another gateway is serving {p}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # never world-accessible, not even between bind() and chmod()
        try:
            s.bind(str(p))
        finally:
            os.umask(old)
        os.chmod(p, 0o660)
        s.listen(8)
        s.settimeout(0.5)
        self._sock = s

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for c in list(self._clients):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
        if self.is_alive():
            self.join(2.0)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def run(self) -> None:
        assert self._sock is not None, "bind() first"
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            with self._lock:
                if len(self._clients) >= self.max_clients and not self._evict_idlest():
                    _refuse(conn)
                    continue
                client = _Client(conn)
                self._clients[conn] = client
            threading.Thread(target=self._serve, args=(client,), name="control-client", daemon=True).start()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def _evict_idlest(self) -> bool:
        """Close the client that has been idle longest (lock held); False when none is idle."""
        idle = [c for c in self._clients.values() if c.idle_since is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since or 0.0)
        del self._clients[victim.conn]
        self.evicted += 1
        try:
            victim.conn.shutdown(socket.SHUT_RDWR)  # its thread sees EOF and closes the socket
        except OSError:
            pass  # already gone
        return True

    # -- one client ----------------------------------------------------------------------------------------
    def _serve(self, client: _Client) -> None:
        conn = client.conn
        try:
            conn.settimeout(self.idle_timeout)
            f = conn.makefile("rb")
            while not self._stopping.is_set():
                with self._lock:
                    client.idle_since = time.monotonic()
                try:
                    line = f.readline(MAX_REQUEST)
                except TimeoutError:
                    return  # idle too long: the slot goes back to the pool
                with self._lock:
                    if conn not in self._clients:
                        return  # evicted while the request arrived
                    client.idle_since = None
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ControlError('a request is a JSON object with a "cmd" string')
                except (json.JSONDecodeError, UnicodeDecodeError, ControlError) as e:
                    conn.sendall(_dumps({"ok": False, "error": f"bad request: {e}"}))
                    continue
                if req["cmd"] == "tail" and self.tail is not None:
                    self._tail(conn)
                    return
                conn.sendall(_dumps(self._call(req)))
        except (BrokenPipeError, ConnectionResetError):
            return
        except OSError as e:
            if not self._stopping.is_set():
                log.warning("control client: %s", e)
        finally:
            with self._lock:
                if self._clients.get(conn) is client:
                    del self._clients[conn]
            conn.close()

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["cmd"]
        handler = self._handlers.get(name)
        if handler is None:
            return {"ok": False, "error": f"unknown command {name!r}; known: {', '.join(self.commands)}"}
        try:
            return {"ok": True, "result": handler(req)}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a failing command must not take the control socket down
            log.exception("control command %s failed", name)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def _tail(self, conn: socket.socket) -> None:
        assert self.tail is not None
        q = self.tail.subscribe()
        try:
            conn.sendall(_dumps({"ok": True, "stream": "tail"}))
            conn.settimeout(5.0)  # a client that stops reading is dropped, not waited for
            while not self._stopping.is_set():
                try:
                    frames = q.get(timeout=0.5)
                except queue.Empty:
                    frames = []
                out = bytearray()
                dropped = self.tail.take_dropped(q)
                if dropped:
                    out += _dumps({"dropped": dropped})
                for fr in frames:
                    out += _dumps(frame_line(fr))
                if out:
                    conn.sendall(out)
                elif _hung_up(conn):
                    return
        finally:
            self.tail.unsubscribe(q)


def _refuse(conn: socket.socket) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(_dumps({"ok": False, "error": "too many control clients"}))
    except OSError:
        pass  # the refused client is gone already
    finally:
        conn.close()


def _hung_up(conn: socket.socket) -> bool:
    """True when the tail client closed its end (nothing to read but EOF)."""
    try:
        conn.setblocking(False)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
    finally:
        conn.settimeout(5.0)


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """One request/response round trip (edge-ctl, tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(_dumps({"cmd": cmd, **args}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a full server answers the refusal and closes before reading: the answer is still there
        f = s.makefile("rb")
        try:
            line = f.readline()
        except ConnectionResetError:
            line = b""
    if not line:
        raise ConnectionError(f"the gateway closed {path} without answering")
    return json.loads(line)  # type: ignore[no-any-return]
