"""The delivery runner: tails the WAL from its ack cursor and sends batches through one connector.

One thread per connector. It owns the transport (delivery.contract) and drives its I/O through one
`select` of its own (the transport's socket from `poll()`, plus a `Waker` for new WAL commits, acks
of cloud commands coming back from line threads, and stop()), so every call into the transport and
every transport event happens on this thread, and events never block. For MQTT this is paho's
external-loop API (`loop_read`, `loop_write`, `loop_misc`), so paho needs no thread of its own.

Delivery (SPEC §5), the same for every connector:
  * Frames are read from the cursor only while connected, batched (`Batcher`), published, and kept
    in a bounded in-flight window. A batch is acknowledged in the WAL when the transport reports its
    final ack — for MQTT PUBCOMP (QoS2), PUBACK (QoS1), the socket write (QoS0) — and only up to the
    lowest batch still unacknowledged, so the cursor never passes a hole.
  * A refused batch (MQTT: a PUBACK/PUBCOMP with a failure reason code) is "not delivered": it is
    sent again (after `backoff.base`), ahead of new batches. Batches already accepted are not
    resent, so a subscriber can see that one batch late; every frame carries its seq.
  * Reconnects use our own exponential backoff with equal jitter (backoff.base → backoff.max).
    Within one process the transport may resend its own unsettled messages after a reconnect (paho
    does for QoS1/2 with a persistent session) and nothing is read twice. Unacknowledged QoS0
    batches die with the connection: then the cursor is rewound to acked+1. After a restart the
    cursor starts at acked+1 anyway: at most the last in-flight window is sent twice, never a gap.
  * A session granting a lower QoS than configured: publish at the granted QoS, mark every frame
    `"dup":"possible"` and the message `dup=possible`, record a `sys.qos_downgrade` frame in the
    WAL, count `connector_qos_downgrade_total`. If the window still holds messages at the higher QoS
    (the far end changed under us), the transport's client is replaced and the cursor rewound.
  * Message properties (contract.Message): seq_first, seq_last, count, encoding (zstd|identity),
    cover ("first-last": the WAL range the batch accounts for, commands included, so consumers can
    check continuity), and dup=possible after a QoS downgrade.
  * `max_bytes` bounds the uncompressed JSON; the session's receive maximum bounds the window.

Commands (commands.Downlink): the transport hands each one over (`Events.on_command`); the downlink
validates it and has the owning line run it; its ack comes back from that thread, is queued here and
published by the transport on this thread.
"""

from __future__ import annotations

import enum
import logging
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Protocol

from edge_gateway.bus.record import Run
from edge_gateway.config.model import Connector
from edge_gateway.core.frame import GOOD, Frame, now_ms
from edge_gateway.delivery import metrics
from edge_gateway.delivery.batcher import Batch, Batcher
from edge_gateway.delivery.codec import CONTENT_TYPE, Compressor, frame_json, join_batch
from edge_gateway.delivery.commands import Ack, Downlink
from edge_gateway.delivery.contract import Message, Session, Transport
from edge_gateway.delivery.inflight import Flight, Window
from edge_gateway.delivery.waker import Waker

log = logging.getLogger(__name__)

ACK_RESERVE = 8  # in-flight slots kept free for status and command acks
IDLE_POLL = 0.1  # longest sleep while connected: the cursor is polled at least this often


class Cursor(Protocol):
    """What the runner needs of a WAL consumer cursor (bus.wal.Cursor)."""

    @property
    def acked(self) -> int: ...

    @property
    def lag(self) -> int: ...

    def read_runs(self, max_frames: int, timeout: float) -> list[Run]: ...

    def rewind(self) -> None: ...

    def ack(self, seq: int) -> None: ...


class State(enum.Enum):
    IDLE = "idle"  # not started / waiting for the next connection attempt
    CONNECTING = "connecting"  # connection attempt under way
    CONNECTED = "connected"
    STOPPED = "stopped"


def transport_for(connector: Connector, *, window: int, connect_timeout: float, state_dir: str | None) -> Transport:
    """The one place that turns a connector.yml `kind` into a transport (delivery.lookup)."""
    from edge_gateway.delivery.lookup import connector_factory

    factory = connector_factory(connector.kind)
    return factory(connector, window=window, connect_timeout=connect_timeout, state_dir=state_dir)


class Runner(threading.Thread):
    def __init__(
        self,
        connector: Connector,
        cursor: Cursor,
        *,
        transport: Transport | None = None,
        record: Callable[[list[Frame]], int] | None = None,
        downlink: Downlink | None = None,
        window: int = 32,
        connect_timeout: float = 10.0,
        drain_timeout: float = 2.0,
        state_dir: str | None = None,
    ) -> None:
        super().__init__(name=f"uplink-{connector.id}", daemon=True)
        self.cfg = connector
        self.cursor = cursor
        if transport is None:
            transport = transport_for(connector, window=window, connect_timeout=connect_timeout, state_dir=state_dir)
        self.transport = transport
        self._record = record  # publishes frames on the bus (sys.qos_downgrade)
        self.downlink = downlink
        self.window = Window(window)
        self._window_cfg = max(1, window)
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self.batcher = Batcher(connector.batch, connector.max_bytes, connector.max_interval)
        self._read_max = max(connector.batch, 256)
        self._compress = Compressor(connector.compression == "zstd")
        self._ready: deque[Batch] = deque()  # closed, waiting for room in the window
        self._retry: deque[Flight] = deque()  # refused, to be sent again
        self._retry_at = 0.0
        self.heartbeat = time.monotonic()
        self.stale_after = connect_timeout + 10.0  # for the supervisor: an attempt may block that long

        self.state = State.IDLE
        self.qos: int = connector.qos  # effective: min(configured, granted)
        self.granted_qos = 2
        self._attempts = 0  # consecutive failed connection attempts
        self._next_attempt = 0.0
        self._connect_deadline = 0.0
        self._stopping = threading.Event()
        self._reconnect_asked = False
        self._reconnect_deadline = 0.0
        self._need_reset = False  # replace the transport's client and rewind (set from events)
        self._drop_socket = False  # abort the connection once the transport's event has returned
        self._publishing = False
        self._early: set[int] = set()  # tokens acknowledged inside publish()
        self._ack_seq = 0  # settled up to here, acknowledged in the WAL at the end of the turn (_flush_ack)
        self._acks: SimpleQueue[Ack] = SimpleQueue()
        self.session_resumed = False
        self._waker = Waker()

        # figures for `edge-ctl connector mqtt stats`
        self.connected_since: float | None = None
        self.connections = 0
        self.last_error: str | None = None
        self.batches = 0
        self.frames = 0
        self.out_bytes = 0
        self.raw_bytes = 0
        self.retries = 0
        self.downgrades = 0
        self._recent_sizes: deque[int] = deque(maxlen=1024)
        self._recent_latency: deque[float] = deque(maxlen=1024)
        lbl = {"connector": connector.id}
        self._meter = metrics.meter(connector.id)  # per-batch figures: plain numbers, read when scraped
        self._m_connected = metrics.CONNECTED.labels(**lbl)
        self._m_retry_connect = metrics.RETRY.labels(what="connect", **lbl)
        self._m_retry_publish = metrics.RETRY.labels(what="publish", **lbl)
        self._m_downgrade = metrics.QOS_DOWNGRADE.labels(**lbl)
        self._m_connected.set(0)
        transport.commands = downlink is not None
        transport.bind(self)

    # -- called from other threads -------------------------------------------------------------------
    def wake(self, *_: object) -> None:
        """New committed frames (the WAL writer's listener): end the select early, unless the window
        is full — then nothing can be sent before a final ack, and the turn that settles it reads the
        cursor anyway (the commit is visible before the writer calls this)."""
        if not self.window.full:
            self._waker.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish in-flight batches (up to drain_timeout), say goodbye, disconnect, end the thread."""
        if self.downlink is not None:
            self.downlink.accepting = False
        self._stopping.set()
        self._waker.set()
        if self.is_alive():
            self.join(timeout)
        if self.downlink is not None:
            self.downlink.close()

    def reconnect(self) -> None:
        """`edge-ctl connector mqtt reconnect`: let in-flight batches finish (a few seconds at most),
        then reconnect with a fresh client, so new credentials and TLS files are read."""
        self._reconnect_asked = True
        self._waker.set()

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    def stats(self) -> dict[str, Any]:
        sizes = sorted(self._recent_sizes)
        lat = list(self._recent_latency)

        def pct(xs: list[int], p: float) -> int | None:
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else None

        ts = dict(self.transport.status())
        head: dict[str, Any] = {k: ts.pop(k) for k in ("broker", "client_id") if k in ts}
        return {
            "connector": self.cfg.id,
            **head,
            "state": self.state.value,
            "connected_for_s": round(time.monotonic() - self.connected_since, 1) if self.connected_since else None,
            "connections": self.connections,
            "qos_configured": self.cfg.qos,
            "qos_effective": self.qos,
            "qos_downgrades": self.downgrades,
            "compression": self._compress.encoding,
            "acked_seq": self.cursor.acked,
            "lag": self.cursor.lag,
            "inflight": self.window.open,
            "window": self.window.size,
            "batches": self.batches,
            "frames": self.frames,
            "out_bytes": self.out_bytes,
            "compression_ratio": round(self.raw_bytes / self.out_bytes, 2) if self.out_bytes else None,
            "batch_frames_p50": pct(sizes, 0.5),
            "batch_frames_p95": pct(sizes, 0.95),
            "latency_ms_avg": round(1000 * sum(lat) / len(lat), 2) if lat else None,
            "retries": self.retries,
            "commands_pending": self.downlink.pending if self.downlink else 0,
            "session": "resumed" if self.session_resumed else "new",
            **ts,
            "last_error": self.last_error,
        }

    # -- the thread ------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                self.heartbeat = now
                if self.state is State.IDLE and now >= self._next_attempt:
                    self._attempt()
                elif self.state is State.CONNECTING and now >= self._connect_deadline:
                    self._fail(f"no CONNACK within {self.connect_timeout:.0f}s")
                if self._reconnect_asked:
                    self._manual_reconnect(now)
                if self.downlink is not None:
                    self.downlink.expire()
                if self.state is State.CONNECTED:
                    self._send_acks()
                    self._pump(now)
                self._io(self._timeout(time.monotonic()))
                self._flush_ack()
                if self._need_reset:
                    self._reset("client replaced")
                elif self._drop_socket:
                    self._teardown()
            self._shutdown()
        except Exception:
            log.exception("uplink %s crashed", self.cfg.id)
            raise
        finally:
            self.state = State.STOPPED
            self._m_connected.set(0)
            self._meter.inflight = 0

    def _timeout(self, now: float) -> float:
        t = 1.0  # keepalive checks and heartbeats
        if self.state is State.IDLE:
            t = min(t, max(0.0, self._next_attempt - now))
        elif self.state is State.CONNECTING:
            t = min(t, max(0.0, self._connect_deadline - now))
        elif self.state is State.CONNECTED:
            if self._retry:
                t = min(t, max(0.0, self._retry_at - now))
            elif not self.window.full:
                due = self.batcher.due_in()
                t = min(t, IDLE_POLL if due is None else due)
        return t

    def _io(self, timeout: float) -> None:
        """One select over the waker and the transport, then the transport's I/O. The waker is
        drained before anything else looks at the work it announced (delivery.waker)."""
        p = self.transport.poll()
        rlist: list[Any] = [self._waker]
        wlist: list[Any] = []
        if p.read is not None:
            rlist.append(p.read)
            if p.write:
                wlist.append(p.read)
        if p.ready:
            timeout = 0.0
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):
            readable, writable = [p.read] if p.read is not None else [], []  # the socket died: let it see it
        if self._waker in readable:
            self._waker.drain()
        sock_r = p.read is not None and p.read in readable
        self.transport.io(sock_r or timeout == 0.0, p.read is not None and p.read in writable)

    # -- connection ------------------------------------------------------------------------------------
    def _attempt(self) -> None:
        try:
            self.state = State.CONNECTING
            self._connect_deadline = time.monotonic() + self.connect_timeout
            self.transport.open()
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake, unreadable password_file
            self._fail(str(e))

    def _fail(self, why: str, teardown: bool = True) -> None:
        """A connection attempt or a connection ended: schedule the next attempt with backoff.
        Inside a transport event the connection is left to the transport (`teardown=False`) and
        aborted after."""
        was_connected = self.state is State.CONNECTED
        self.state = State.IDLE
        if teardown:
            self._teardown()
        else:
            self._drop_socket = True
        first = self._attempts == 0
        self._attempts += 1
        delay = self._backoff()
        self._next_attempt = time.monotonic() + delay
        self._set_disconnected()
        self.last_error = why
        self.retries += 1
        self._m_retry_connect.inc()
        level = logging.WARNING if first or was_connected else logging.DEBUG
        log.log(level, "%s %s: %s; next attempt in %.1fs", self.cfg.kind, self.cfg.id, why, delay,
                extra={"attempt": self._attempts})  # fmt: skip

    def _teardown(self) -> None:
        self._drop_socket = False
        self.transport.abort()

    def _backoff(self) -> float:
        """base·2ⁿ capped at max, with 'equal jitter': half fixed, half random, so a fleet that lost
        the same broker does not come back in lockstep."""
        b = self.cfg.backoff
        d = min(b.max, b.base * (2 ** min(self._attempts - 1, 30)))
        return d / 2 + random.uniform(0, d / 2)  # noqa: S311 - jitter, not cryptography

    def _set_disconnected(self) -> None:
        self.connected_since = None
        self._m_connected.set(0)

    # -- transport events (contract.Events), on this thread ----------------------------------------------
    def on_connected(self, session: Session) -> bool:
        self.granted_qos = session.max_qos
        self.window.size = max(1, min(self._window_cfg, session.receive_max - ACK_RESERVE))
        old_qos, self.qos = self.qos, min(int(self.cfg.qos), self.granted_qos)
        self.state = State.CONNECTED
        self.session_resumed = session.resumed
        self.connected_since = time.monotonic()
        self.connections += 1
        self._attempts = 0
        self.last_error = None
        self._m_connected.set(1)
        if any(f.qos > self.qos for f in self.window.unsettled()):
            # the transport is about to resend messages at a QoS the far end refuses: start over instead
            log.warning("%s %s: now granted QoS %d; replacing the session", self.cfg.kind, self.cfg.id, self.qos)
            self._need_reset = True
            return False
        if self.qos < self.cfg.qos:
            self._downgraded(old_qos)
        return True

    def on_disconnected(self, why: str) -> None:
        if self.state is State.IDLE:
            return
        if self._stopping.is_set():
            self.state = State.IDLE
            self._set_disconnected()
            return
        keeps = getattr(self.transport, "keeps_unsettled", True)
        if any(f.qos == 0 or not keeps for f in self.window.unsettled()):
            self._rewind(
                "QoS0 batches lost with the connection" if keeps else "unsettled batches lost with the connection"
            )
        self._fail(why, teardown=False)

    def on_published(self, token: int, error: str | None) -> None:
        if not self.window.owns(token):
            if self._publishing:
                self._early.add(token)  # acknowledged inside publish(), before we learnt the token
            return
        if error is not None:
            flight = self.window.forget(token)
            if flight is not None:
                self.retries += 1
                self._m_retry_publish.inc()
                self.last_error = f"broker refused batch {flight.batch.seq_first}-{flight.batch.seq_last}: {error}"
                log.warning("%s %s: %s; sending it again", self.cfg.kind, self.cfg.id, self.last_error)
                self._retry.append(flight)
                self._retry = deque(sorted(self._retry, key=lambda f: f.batch.first))
                self._retry_at = time.monotonic() + self.cfg.backoff.base
            return
        self._settled(token)

    def on_command(self, tag: str, payload: bytes, retained: bool) -> None:
        if self.downlink is not None:
            self.downlink.handle(tag, payload, retained, self._ack_ready)

    def on_error(self, why: str) -> None:
        self.last_error = why

    def _downgraded(self, old_qos: int) -> None:
        self.downgrades += 1
        self._m_downgrade.inc()
        log.warning(
            "%s %s: granted QoS %d, configured %d: publishing at QoS %d, frames marked dup=possible",
            self.cfg.kind,
            self.cfg.id,
            self.granted_qos,
            self.cfg.qos,
            self.qos,
            extra={"configured_qos": self.cfg.qos, "granted_qos": self.granted_qos},
        )
        if self._record is not None:
            meta: dict[str, object] = {
                "connector": self.cfg.id,
                "configured": self.cfg.qos,
                "granted": self.granted_qos,
                "from_seq": self.cursor.acked + 1,
            }
            self._record([Frame(0, now_ms(), "sys.qos_downgrade", self.qos, GOOD, meta=meta)])

    def _manual_reconnect(self, now: float) -> None:
        if self.state is State.CONNECTED:
            if not self._reconnect_deadline:
                self._reconnect_deadline = now + max(self.drain_timeout, 5.0)
                log.info("%s %s: reconnect requested; letting in-flight batches finish", self.cfg.kind, self.cfg.id)
                return
            if self.window.open and now < self._reconnect_deadline:
                return
        self._reconnect_asked = False
        self._reconnect_deadline = 0.0
        self._reset("reconnect requested")

    def _reset(self, why: str) -> None:
        """Replace the transport's client (fresh TLS files, no stale in-flight state), resend from acked+1."""
        self._need_reset = False
        self.state = State.IDLE
        self._drop_socket = False
        self.transport.abort(discard=True)
        self._rewind(why)
        self.state = State.IDLE
        self._set_disconnected()
        self._attempts = 0
        self._next_attempt = 0.0

    def _rewind(self, why: str) -> None:
        self._flush_ack()  # what was settled stays acknowledged: the rewind resends only the rest
        unsettled = self.window.open
        self.window.clear()
        self._ready.clear()
        self._retry.clear()
        self.batcher.clear()
        self.cursor.rewind()
        self._meter.inflight = 0
        log.info("%s %s: %s; resending from seq %d", self.cfg.kind, self.cfg.id, why, self.cursor.acked + 1,
                 extra={"lost": unsettled})  # fmt: skip

    # -- uplink ------------------------------------------------------------------------------------------
    def _pump(self, now: float) -> None:
        """Fill the window: refused batches first, then closed ones, then new frames from the cursor."""
        if self._retry:
            if now < self._retry_at:
                return
            while self._retry and self.state is State.CONNECTED:
                self._send(self._retry.popleft())
            return
        if self._reconnect_deadline:
            return  # draining for a manual reconnect
        while self.state is State.CONNECTED and not self.window.full:
            if not self._ready:
                runs = self.cursor.read_runs(self._read_max, 0)
                if runs:
                    self._ready.extend(self.batcher.add_runs(runs))
                else:
                    due = self.batcher.take_due()
                    if due is None:
                        break
                    self._ready.append(due)
                continue
            self._dispatch(self._ready.popleft())
        self._meter.inflight = self.window.open

    def _dispatch(self, batch: Batch) -> None:
        flight = Flight(batch, self.qos)
        if not batch.count:  # only skipped frames
            flight.done = True
            self.window.add(flight)
            self._advance()
            return
        self.window.add(flight)
        self._send(flight)

    def _send(self, flight: Flight) -> None:
        b = flight.batch
        dup = flight.qos < self.cfg.qos or b.dup_marked
        if not flight.payload or flight.dup != dup:
            # the stored JSON as it is; with dup marks (rare: a QoS downgrade, a redelivered source
            # message) each frame is decoded and encoded again
            raw = join_batch([frame_json(f, True) for f in b.frames]) if dup else b.json()
            if self.cfg.batch == 1:
                raw = raw[1:-1]  # one frame, no array
            flight.payload, flight.dup = self._compress(raw), dup
            self.raw_bytes += len(raw)
        msg = Message(
            payload=flight.payload,
            qos=flight.qos,
            seq_first=b.seq_first,
            seq_last=b.seq_last,
            count=b.count,
            encoding=self._compress.encoding,
            cover=f"{b.cover_first}-{b.last}",
            dup=dup,
            tag=b.frames[0].tag if self.cfg.batch == 1 else None,
            content_type=CONTENT_TYPE,
        )
        self._publishing = True
        try:
            token = self.transport.publish(msg)
        finally:
            self._publishing = False
        flight.tries += 1
        self.window.track(flight, token)
        self.out_bytes += len(flight.payload)
        self._meter.out_bytes += len(flight.payload)
        if flight.tries == 1:
            self._meter.batch_size.observe(b.count)
            self._recent_sizes.append(b.count)
        if token in self._early:
            self._early.discard(token)
            self._settled(token)

    def _settled(self, token: int) -> None:
        flight = self.window.settle(token)
        if flight is None:
            return
        dt = time.monotonic() - flight.sent_at
        self._meter.latency.observe(dt)
        self._recent_latency.append(dt)
        self.batches += 1
        self.frames += flight.batch.count
        self._meter.frames += flight.batch.count
        self._advance()

    def _advance(self) -> None:
        last = self.window.advance()
        if last is not None:
            self._ack_seq = last
        self._meter.inflight = self.window.open

    def _flush_ack(self) -> None:
        """Acknowledge in the WAL what the last turn settled: once per turn, not per batch (an ack takes
        the WAL's lock, which its writer holds while it commits)."""
        if self._ack_seq:
            self.cursor.ack(self._ack_seq)
            self._ack_seq = 0

    # -- downlink ----------------------------------------------------------------------------------------
    def _ack_ready(self, ack: Ack) -> None:
        """From any thread: queue the ack for this thread (the transport is only touched here)."""
        if ack.seq is not None:
            self._acks.put(ack)
            self._waker.set()

    def _send_acks(self) -> None:
        while not self._acks.empty():  # this thread is the only reader
            ack = self._acks.get_nowait()
            assert ack.seq is not None
            self.transport.reply(ack.seq, ack.payload())

    # -- stop --------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self.state is not State.CONNECTED:
            self.state = State.IDLE
            self._teardown()
            self._waker.close()
            return
        deadline = time.monotonic() + self.drain_timeout
        self._send_acks()
        while self.window.open and self.state is State.CONNECTED and time.monotonic() < deadline:
            self.heartbeat = time.monotonic()
            self._send_acks()
            self._io(0.05)
            self._flush_ack()
        if self.window.open:
            log.info("%s %s: %d batches unacknowledged at stop; they are resent next start", self.cfg.kind,
                     self.cfg.id, self.window.open)  # fmt: skip
        if self.state is State.CONNECTED:
            self.transport.close(time.monotonic() + 2.0)
        self._waker.close()
        log.info("%s %s stopped at acked seq %d", self.cfg.kind, self.cfg.id, self.cursor.acked)
