"""One Prometheus registry for the whole process.

Every subsystem declares its metrics in its own `metrics.py` against `REGISTRY`, so names
stay next to the code that moves them and a duplicate name fails at import.

Conventions (issue 20): no `_created` series (disabled here, before any subsystem makes a metric,
since every `metrics.py` imports this module first); `_ratio` for shares of 0..1, `_seconds` and
`_bytes` for those units; one label name for one thing, the configuration's word for it
(`endpoint_id`, `driver_id`); identity as info-style gauges that are 1 and carry it in labels
(`edge_gateway_build_info`, `cfg_revision_info`), never as a huge number.
"""

from __future__ import annotations

import logging
import platform
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from edge_gateway import __version__

__all__ = ["REGISTRY", "CollectorRegistry", "LATENCY_BUCKETS", "BUILD_INFO", "MetricsServer", "build_revision", "value"]

log = logging.getLogger(__name__)

# `x_created` beside every counter and histogram doubles the series for a timestamp nobody graphs.
# Read when a registry is collected, so calling it before the first scrape would do; here it also
# precedes every metric of the process.
disable_created_metrics()

# Written into the package by a build that knows its git revision (one line, the revision); a
# source tree or a wheel built without it reports "unknown". Never guessed at run time.
REVISION_FILE = Path(__file__).with_name("REVISION")


def build_revision(path: Path = REVISION_FILE) -> str:
    """The git revision baked in at build time, or "unknown"."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    ok = 0 < len(text) <= 64 and all(c in "0123456789abcdef" for c in text.lower())
    return text.lower() if ok else "unknown"


BUILD_INFO = Gauge(
    "edge_gateway_build_info",
    "Always 1; the labels say which build runs: version, git revision (unknown if not baked in), Python",
    ["version", "revision", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__, revision=build_revision(), python=platform.python_version()).set(1)

# Sub-millisecond to tens of seconds: Modbus transactions on RS-485 and MQTT round trips both fit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample (0.0 when it does not exist yet); for status lines and tests."""
    v = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


class MetricsServer(threading.Thread):
    """`/metrics` over HTTP/1.0 on one thread, whatever the number of clients.

    prometheus_client's `start_http_server` starts a thread per connection and never times a client
    out, so idle connections pile up threads without bound. Here one selector serves every
    connection: it reads the request head (at most MAX_HEAD bytes), answers `GET|HEAD /metrics` (or
    `/`) with `generate_latest` (or the OpenMetrics encoder when the Accept header asks for it), and
    closes. A connection with no progress for `timeout` seconds is
    closed, and when `max_conns` are open a new one evicts the one that has waited longest.
    """

    MAX_HEAD = 8192

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry = REGISTRY,
        max_conns: int = 64,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(name="metrics-http", daemon=True)
        self.registry, self.max_conns, self.timeout = registry, max_conns, timeout
        family, _, _, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(addr)
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._conns: dict[socket.socket, _HttpConn] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self.evicted = self.timed_out = self.served = 0

    @property
    def connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        """Stop serving and release the port (open connections are dropped)."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the loop is gone already
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5.0)
        if not self.is_alive():
            self._cleanup()

    def run(self) -> None:
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                first = min((c.deadline for c in self._conns.values()), default=now + 1.0)
                for key, events in self._sel.select(max(0.0, min(first - now, 1.0))):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        return
                    else:
                        conn = self._conns.get(key.fileobj)  # type: ignore[call-overload]
                        if conn is not None:
                            self._step(conn, events)
                now = time.monotonic()
                for c in [c for c in self._conns.values() if c.deadline <= now]:
                    self.timed_out += 1
                    self._drop(c)
        except Exception:  # noqa: BLE001 - logged; the supervisor sees the thread gone
            log.exception("metrics server failed")
            raise

    def _cleanup(self) -> None:
        for c in list(self._conns.values()):
            self._drop(c)
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: leave it in the backlog for now
                log.warning("metrics: accept: %s", e)
                time.sleep(0.1)  # the listener stays readable: do not spin on it
                return
            if len(self._conns) >= self.max_conns:
                self.evicted += 1
                self._drop(min(self._conns.values(), key=lambda c: c.since))
            sock.setblocking(False)
            now = time.monotonic()
            conn = _HttpConn(sock, now, now + self.timeout)
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ)

    def _step(self, c: _HttpConn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not c.out:
                data = c.sock.recv(4096)
                if not data:
                    self._drop(c)
                    return
                c.head += data
                c.deadline = time.monotonic() + self.timeout
                if b"\r\n\r\n" in c.head or b"\n\n" in c.head:
                    c.out = self._respond(bytes(c.head))
                    self._sel.modify(c.sock, selectors.EVENT_WRITE)
                elif len(c.head) > self.MAX_HEAD:
                    c.out = _response(431, "text/plain", b"request header too large\n")
                    self._sel.modify(c.sock, selectors.EVENT_WRITE)
            elif events & selectors.EVENT_WRITE and c.out:
                sent = c.sock.send(c.out)
                c.out = c.out[sent:]
                c.deadline = time.monotonic() + self.timeout
                if not c.out:
                    self.served += 1
                    self._drop(c)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)

    def _respond(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] not in ("GET", "HEAD"):
            return _response(405, "text/plain", b"only GET /metrics\n")
        path = line[1].split("?", 1)[0]
        if path not in ("/", "/metrics"):
            return _response(404, "text/plain", b"try /metrics\n")
        accept = ""
        for h in head.decode("latin-1").splitlines()[1:]:
            name, _, val = h.partition(":")
            if name.strip().lower() == "accept":
                accept = val.strip()
        encoder, ctype = choose_encoder(accept)  # OpenMetrics when the scraper asks for it, as before
        try:
            body = encoder(self.registry)
        except Exception:  # noqa: BLE001 - a broken collector must not take the endpoint down
            log.exception("metrics: a collector failed")
            return _response(500, "text/plain", b"a collector failed; see the gateway log\n")
        out = _response(200, ctype, body)
        return out[: len(out) - len(body)] if line[0] == "HEAD" else out

    def _drop(self, c: _HttpConn) -> None:
        if self._conns.pop(c.sock, None) is None:
            return
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()


@dataclass
class _HttpConn:
    sock: socket.socket
    since: float
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    out: bytes = b""


_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def _response(status: int, ctype: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
