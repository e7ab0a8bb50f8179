"""The MQTT 5 thread: tails the WAL from its ack cursor, publishes batches, takes cloud commands.

One thread owns the paho client and drives it through paho's external-loop API (`loop_read`,
`loop_write`, `loop_misc` around our own `select`), so every paho call and callback happens on this
thread, callbacks never block, and the same `select` also wakes up on new WAL commits and on acks
of cloud commands coming back from line threads.

Delivery (SPEC §5):
  * Frames are read from the cursor only while connected, batched (`Batcher`), published, and kept
    in a bounded in-flight window. A batch is acknowledged in the WAL when the broker's final ack
    arrives — PUBCOMP (QoS2), PUBACK (QoS1), the socket write (QoS0) — and only up to the lowest
    batch still unacknowledged, so the cursor never passes a hole.
  * A PUBACK/PUBCOMP with a failure reason code means "not delivered": the batch is sent again
    (after `backoff.base`), ahead of new batches. Batches the broker already accepted are not
    resent, so a subscriber can see that one batch late; every frame carries its seq.
  * Reconnects use our own exponential backoff with jitter (backoff.base → backoff.max), not
    paho's. The session is persistent (clean_start=False on every connect, the configured
    client_id, SessionExpiryInterval = session_expiry): the broker keeps the command subscription
    and queues the commands sent while the gateway is away, across process restarts too (they are
    then executed if their ttl allows, or refused `expired`). Within one process paho resends its
    own in-flight QoS1/2 publishes after a reconnect and nothing is read twice. Unacknowledged QoS0 batches die
    with the socket: then the cursor is rewound to acked+1. After a restart the cursor starts at
    acked+1 anyway: at most the last in-flight window is sent twice, never a gap.
  * CONNACK MaximumQoS below the configured qos: publish at the granted QoS, mark every frame
    `"dup":"possible"` and the message `dup=possible`, record a `sys.qos_downgrade` frame in the
    WAL, count `connector_qos_downgrade_total`. If paho still holds publishes at the higher QoS
    (the broker changed under us), the client is replaced and the cursor rewound.
  * User properties: seq_first, seq_last, count, encoding (zstd|identity), cover ("first-last": the
    WAL range the batch accounts for, commands included, so consumers can check continuity), and
    dup=possible after a QoS downgrade.
  * `max_bytes` bounds the uncompressed JSON; ReceiveMaximum from CONNACK bounds the window
    (paho itself ignores it).
  * Status: retained `online` on status_topic after each CONNACK, `offline` as the last will and
    published before a clean stop (a clean DISCONNECT suppresses the will).

Commands (commands.Downlink): subscribed with retain-as-published, so a retained command is seen as
retained (and refused) however it reaches us, and no-local. The subscription is reconciled with the
one the resumed session holds (uplink.session: a changed cmd_topic unsubscribes the old filter).
Nothing that arrives can end the thread: on_message refuses and counts what it cannot handle.
CONNECT carries MaximumPacketSize (16 × cmd_max_bytes, at least 16 MiB): the broker drops larger
messages for us instead of making a small board hold them (smaller oversized ones are refused and
acked `too_large`).
"""

from __future__ import annotations

import enum
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_gateway.config.model import Connector
from edge_gateway.core.frame import GOOD, Frame, now_ms
from edge_gateway.uplink import metrics
from edge_gateway.uplink.batcher import Batch, Batcher
from edge_gateway.uplink.codec import CONTENT_TYPE, Compressor, frame_json, join_batch
from edge_gateway.uplink.commands import Ack, Downlink
from edge_gateway.uplink.inflight import Flight, Window
from edge_gateway.uplink.session import Options, SessionState
from edge_gateway.uplink.topics import Topics

log = logging.getLogger(__name__)

ACK_RESERVE = 8  # in-flight slots kept free for status and command acks
IDLE_POLL = 0.1  # longest sleep while connected: the cursor is polled at least this often


class Cursor(Protocol):
    """What the uplink needs of a WAL consumer cursor (bus.wal.Cursor)."""

    @property
    def acked(self) -> int: ...

    @property
    def lag(self) -> int: ...

    def read(self, max_frames: int, timeout: float) -> list[Frame]: ...

    def rewind(self) -> None: ...

    def ack(self, seq: int) -> None: ...


class State(enum.Enum):
    IDLE = "idle"  # not started / waiting for the next connection attempt
    CONNECTING = "connecting"  # socket open, waiting for CONNACK
    CONNECTED = "connected"
    STOPPED = "stopped"


class Uplink(threading.Thread):
    def __init__(
        self,
        connector: Connector,
        cursor: Cursor,
        *,
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
        self.topics = Topics.of(connector)
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
        self._retry: deque[Flight] = deque()  # refused by the broker, to be sent again
        self._retry_at = 0.0
        self.heartbeat = time.monotonic()
        self.stale_after = connect_timeout + 10.0  # for the supervisor: connect() may block that long

        self.state = State.IDLE
        self.qos: int = connector.qos  # effective: min(configured, CONNACK MaximumQoS)
        self.granted_qos = 2
        self._receive_max = 65535
        self._client: mqtt.Client | None = None
        self._attempts = 0  # consecutive failed connection attempts
        self._next_attempt = 0.0
        self._connect_deadline = 0.0
        self._stopping = threading.Event()
        self._reconnect_asked = False
        self._reconnect_deadline = 0.0
        self._need_reset = False  # replace the client and rewind (set from callbacks)
        self._drop_socket = False  # close the socket once paho's callback has returned
        self._publishing = False
        self._early: set[int] = set()  # QoS0 mids acknowledged inside publish()
        self._acks: SimpleQueue[Ack] = SimpleQueue()
        self._stray = 0  # messages on topics that are not commands
        self.session_resumed = False  # the last CONNACK had session_present
        self._status_mid: int | None = None
        self._status_acked = threading.Event()
        key = f"{connector.host}:{connector.port} {connector.client_id}"
        self.session = SessionState.load(state_dir, f"uplink-{connector.id}", key)
        self._sub_pending: dict[int, tuple[str, str, Options]] = {}  # mid → (subscribe|unsubscribe, filter, opts)

        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False

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
        self._m_out = metrics.OUT_BYTES.labels(**lbl)
        self._m_frames = metrics.OUT_FRAMES.labels(**lbl)
        self._m_batch = metrics.BATCH_SIZE.labels(**lbl)
        self._m_latency = metrics.LATENCY.labels(**lbl)
        self._m_inflight = metrics.INFLIGHT.labels(**lbl)
        self._m_connected = metrics.CONNECTED.labels(**lbl)
        self._m_retry_connect = metrics.RETRY.labels(what="connect", **lbl)
        self._m_retry_publish = metrics.RETRY.labels(what="publish", **lbl)
        self._m_downgrade = metrics.QOS_DOWNGRADE.labels(**lbl)
        self._m_connected.set(0)

    # -- called from other threads -------------------------------------------------------------------
    def wake(self, *_: object) -> None:
        """New committed frames (WAL listener) or a command ack is waiting: end the select early."""
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"!")
            except (BlockingIOError, OSError):
                pass  # the socket buffer is full, so the thread is already due to wake up

    def stop(self, timeout: float = 10.0) -> None:
        """Finish in-flight batches (up to drain_timeout), publish `offline`, disconnect, end the thread."""
        if self.downlink is not None:
            self.downlink.accepting = False
        self._stopping.set()
        self.wake()
        if self.is_alive():
            self.join(timeout)
        if self.downlink is not None:
            self.downlink.close()

    def reconnect(self) -> None:
        """`edge-ctl connector mqtt reconnect`: let in-flight batches finish (a few seconds at most),
        then reconnect with a fresh client, so new credentials and TLS files are read."""
        self._reconnect_asked = True
        self.wake()

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    def stats(self) -> dict[str, Any]:
        sizes = sorted(self._recent_sizes)
        lat = list(self._recent_latency)

        def pct(xs: list[int], p: float) -> int | None:
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else None

        return {
            "connector": self.cfg.id,
            "broker": f"{self.cfg.scheme}://{self.cfg.host}:{self.cfg.port}",
            "client_id": self.cfg.client_id,
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
            "subscriptions": sorted(self.session.subs),
            "stray": self._stray,
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
            self._m_inflight.set(0)

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
        cl = self._client
        sock = cl.socket() if cl is not None else None
        rlist: list[Any] = [self._wake_r]
        wlist: list[Any] = []
        if sock is not None:
            rlist.append(sock)
            if cl is not None and cl.want_write():
                wlist.append(sock)
            pending = getattr(sock, "pending", None)
            if pending is not None and pending() > 0:
                timeout = 0.0  # TLS has decrypted bytes select() cannot see
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):
            readable, writable = [sock] if sock is not None else [], []  # the socket died: let paho see it
        if self._wake_r in readable:
            self._woken = False
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        if cl is None or sock is None:
            return
        if sock in readable or timeout == 0.0:
            cl.loop_read()
        if cl.socket() is not None and (sock in writable or cl.want_write()):
            cl.loop_write()
        if cl.socket() is not None:
            cl.loop_misc()

    # -- connection ------------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        c = self.cfg
        cl = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        cl.on_connect = self._on_connect
        cl.on_disconnect = self._on_disconnect
        cl.on_publish = self._on_publish
        cl.on_message = self._on_message
        cl.on_subscribe = self._on_subscribe
        cl.on_unsubscribe = self._on_unsubscribe
        cl.max_inflight_messages_set(min(self._receive_max, self._window_cfg + ACK_RESERVE))
        cl.max_queued_messages_set(0)
        cl.connect_timeout = self.connect_timeout
        if c.scheme == "tls":
            tls = c.tls
            cl.tls_set(
                ca_certs=tls.ca if tls else None,
                certfile=tls.client_cert if tls else None,
                keyfile=tls.client_key if tls else None,
            )
        will_qos = min(1, self.granted_qos)
        cl.will_set(self.topics.status, b"offline", qos=will_qos, retain=True)
        return cl

    def _credentials(self) -> tuple[str | None, str | None]:
        c = self.cfg
        password = c.password
        if c.password_file:
            with open(c.password_file, encoding="utf-8") as f:  # read at every connect: rotation needs no reload
                password = f.read().rstrip("\r\n")
        return c.username, password

    def _attempt(self) -> None:
        c = self.cfg
        try:
            if self._client is None:
                self._client = self._new_client()
            cl = self._client
            user, password = self._credentials()
            if user is not None or password is not None:
                cl.username_pw_set(user, password)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = max(0, min(int(c.session_expiry), 0xFFFFFFFF))
            props.MaximumPacketSize = max(16 << 20, 16 * c.cmd_max_bytes)
            self.state = State.CONNECTING
            self._connect_deadline = time.monotonic() + self.connect_timeout
            rc = cl.connect(
                c.host,
                c.port,
                keepalive=max(1, round(c.keepalive)),
                clean_start=False,  # resume the session: commands queued while we were away are delivered
                properties=props,
            )
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._fail(f"connect: {mqtt.error_string(rc)}")
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake, unreadable password_file
            self._fail(f"connect to {c.host}:{c.port}: {e}")

    def _fail(self, why: str, teardown: bool = True) -> None:
        """A connection attempt or a connection ended: schedule the next attempt with backoff.
        Inside a paho callback the socket is left to paho (`teardown=False`) and dropped after."""
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
        log.log(level, "mqtt %s: %s; next attempt in %.1fs", self.cfg.id, why, delay, extra={"attempt": self._attempts})

    def _teardown(self) -> None:
        """Close the client's socket (a DISCONNECT first, when it can be written right away)."""
        self._drop_socket = False
        cl = self._client
        sock = cl.socket() if cl is not None else None
        if cl is None or sock is None:
            return
        cl.disconnect()
        cl.loop_write()
        if cl.socket() is not None:
            sock.close()  # type: ignore[union-attr]

    def _backoff(self) -> float:
        """base·2ⁿ capped at max, with 'equal jitter': half fixed, half random, so a fleet that lost
        the same broker does not come back in lockstep."""
        b = self.cfg.backoff
        d = min(b.max, b.base * (2 ** min(self._attempts - 1, 30)))
        return d / 2 + random.uniform(0, d / 2)  # noqa: S311 - jitter, not cryptography

    def _set_disconnected(self) -> None:
        self.connected_since = None
        self._m_connected.set(0)

    def _on_connect(self, cl: mqtt.Client, _ud: object, flags: Any, rc: ReasonCode, props: Properties | None) -> None:
        if cl is not self._client:
            return
        if rc.is_failure:
            self._fail(f"broker refused the connection: {rc}", teardown=False)
            return
        self.granted_qos = int(getattr(props, "MaximumQoS", 2))
        self._receive_max = int(getattr(props, "ReceiveMaximum", 65535))
        self.window.size = max(1, min(self._window_cfg, self._receive_max - ACK_RESERVE))
        old_qos, self.qos = self.qos, min(int(self.cfg.qos), self.granted_qos)
        self.state = State.CONNECTED
        self.session_resumed = bool(flags.session_present)
        self.connected_since = time.monotonic()
        self.connections += 1
        self._attempts = 0
        self.last_error = None
        self._m_connected.set(1)
        log.info(
            "mqtt %s connected to %s:%d (session %s, qos %d)",
            self.cfg.id,
            self.cfg.host,
            self.cfg.port,
            "resumed" if flags.session_present else "new",
            self.qos,
            extra={"session_present": bool(flags.session_present), "qos": self.qos},
        )
        if any(f.qos > self.qos for f in self.window.unsettled()):
            # paho is about to resend publishes at a QoS this broker refuses: start over instead
            log.warning("mqtt %s: broker now grants QoS %d; replacing the session", self.cfg.id, self.granted_qos)
            self._need_reset = True
            return
        if self.qos < self.cfg.qos:
            self._downgraded(old_qos)
        cl.publish(self.topics.status, b"online", qos=min(1, self.granted_qos), retain=True)
        self._reconcile(cl, bool(flags.session_present))

    def _wanted(self) -> dict[str, Options]:
        if self.downlink is None:
            return {}
        return {self.topics.cmd_filter: {"qos": min(1, self.qos), "nl": True, "rap": True}}

    def _reconcile(self, cl: mqtt.Client, session_present: bool) -> None:
        """Make the session's subscriptions the configured ones (uplink.session)."""
        self._sub_pending.clear()  # SUBACKs lost with the previous link never come
        wanted = self._wanted()
        gone, new = self.session.plan(wanted, session_present)
        for f in gone:
            _, mid = cl.unsubscribe(f)
            log.info("mqtt %s: unsubscribing %r (no longer configured)", self.cfg.id, f)
            if mid is not None:
                self._sub_pending[mid] = ("unsubscribe", f, {})
        for f in new:
            o = wanted[f]
            opts = SubscribeOptions(qos=o["qos"], noLocal=o["nl"], retainAsPublished=o["rap"])
            _, mid = cl.subscribe(f, options=opts)
            if mid is not None:
                self._sub_pending[mid] = ("subscribe", f, o)

    def _on_subscribe(self, _cl: mqtt.Client, _ud: object, mid: int, rcs: list[ReasonCode], _props: Any) -> None:
        what = self._sub_pending.pop(mid, None)
        if what is None:
            return
        _, f, o = what
        if rcs and rcs[0].is_failure:
            self.last_error = f"command subscription {f!r} refused: {rcs[0]}"
            log.error("mqtt %s: %s", self.cfg.id, self.last_error)
            self.session.unsubscribed(f)
            return
        self.session.subscribed(f, o)

    def _on_unsubscribe(self, _cl: mqtt.Client, _ud: object, mid: int, _rcs: Any, _props: Any) -> None:
        what = self._sub_pending.pop(mid, None)
        if what is not None:
            self.session.unsubscribed(what[1])

    def _downgraded(self, old_qos: int) -> None:
        self.downgrades += 1
        self._m_downgrade.inc()
        log.warning(
            "mqtt %s: broker grants QoS %d, configured %d: publishing at QoS %d, frames marked dup=possible",
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

    def _on_disconnect(self, cl: mqtt.Client, _ud: object, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        if cl is not self._client or self.state is State.IDLE:
            return
        if self._stopping.is_set():
            self.state = State.IDLE
            self._set_disconnected()
            return
        if any(f.qos == 0 for f in self.window.unsettled()):
            self._rewind("QoS0 batches lost with the connection")
        self._fail(f"connection lost: {rc}", teardown=False)

    def _manual_reconnect(self, now: float) -> None:
        if self.state is State.CONNECTED:
            if not self._reconnect_deadline:
                self._reconnect_deadline = now + max(self.drain_timeout, 5.0)
                log.info("mqtt %s: reconnect requested; letting in-flight batches finish", self.cfg.id)
                return
            if self.window.open and now < self._reconnect_deadline:
                return
        self._reconnect_asked = False
        self._reconnect_deadline = 0.0
        self._reset("reconnect requested")

    def _reset(self, why: str) -> None:
        """Replace the paho client (fresh TLS files, no stale in-flight state) and resend from acked+1."""
        self._need_reset = False
        self.state = State.IDLE
        self._teardown()
        self._client = None
        self._rewind(why)
        self.state = State.IDLE
        self._set_disconnected()
        self._attempts = 0
        self._next_attempt = 0.0

    def _rewind(self, why: str) -> None:
        unsettled = self.window.open
        self.window.clear()
        self._ready.clear()
        self._retry.clear()
        self.batcher.clear()
        self.cursor.rewind()
        self._m_inflight.set(0)
        log.info(
            "mqtt %s: %s; resending from seq %d", self.cfg.id, why, self.cursor.acked + 1, extra={"lost": unsettled}
        )

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
                frames = self.cursor.read(self._read_max, 0)
                if frames:
                    self._ready.extend(self.batcher.add(frames))
                else:
                    due = self.batcher.take_due()
                    if due is None:
                        break
                    self._ready.append(due)
                continue
            self._dispatch(self._ready.popleft())
        self._m_inflight.set(self.window.open)

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
        cl = self._client
        assert cl is not None
        b = flight.batch
        dup = flight.qos < self.cfg.qos or any(f.meta and f.meta.get("dup") == "possible" for f in b.frames)
        if not flight.payload or flight.dup != dup:
            parts = [frame_json(f, True) for f in b.frames] if dup else b.parts
            raw = parts[0].encode("ascii") if self.cfg.batch == 1 else join_batch(parts)
            flight.payload, flight.dup = self._compress(raw), dup
            self.raw_bytes += len(raw)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE
        props.UserProperty = [
            ("seq_first", str(b.seq_first)),
            ("seq_last", str(b.seq_last)),
            ("count", str(b.count)),
            ("encoding", self._compress.encoding),
            ("cover", f"{b.cover_first}-{b.last}"),
        ]
        if dup:
            props.UserProperty = ("dup", "possible")
        topic = self.topics.frame_topic(b.frames[0].tag) if self.cfg.batch == 1 else self.topics.batch
        self._publishing = True
        try:
            info = cl.publish(topic, flight.payload, qos=flight.qos, properties=props)
        except ValueError as e:  # a tag that is not a valid topic level: send it on the batch topic instead
            log.error("mqtt %s: cannot publish on %r (%s); using %s", self.cfg.id, topic, e, self.topics.batch)
            info = cl.publish(self.topics.batch, flight.payload, qos=flight.qos, properties=props)
        finally:
            self._publishing = False
        flight.tries += 1
        self.window.track(flight, info.mid)
        self.out_bytes += len(flight.payload)
        self._m_out.inc(len(flight.payload))
        if flight.tries == 1:
            self._m_batch.observe(b.count)
            self._recent_sizes.append(b.count)
        if info.mid in self._early:
            self._early.discard(info.mid)
            self._settled(info.mid)

    def _on_publish(self, _cl: mqtt.Client, _ud: object, mid: int, rc: ReasonCode, _props: Any) -> None:
        if mid == self._status_mid:
            self._status_acked.set()
            return
        if not self.window.owns(mid):
            if self._publishing:
                self._early.add(mid)  # QoS0 written inside publish(), before we learnt the mid
            return
        if rc.is_failure:
            flight = self.window.forget(mid)
            if flight is not None:
                self.retries += 1
                self._m_retry_publish.inc()
                self.last_error = f"broker refused batch {flight.batch.seq_first}-{flight.batch.seq_last}: {rc}"
                log.warning("mqtt %s: %s; sending it again", self.cfg.id, self.last_error)
                self._retry.append(flight)
                self._retry = deque(sorted(self._retry, key=lambda f: f.batch.first))
                self._retry_at = time.monotonic() + self.cfg.backoff.base
            return
        self._settled(mid)

    def _settled(self, mid: int) -> None:
        flight = self.window.settle(mid)
        if flight is None:
            return
        dt = time.monotonic() - flight.sent_at
        self._m_latency.observe(dt)
        self._recent_latency.append(dt)
        self.batches += 1
        self.frames += flight.batch.count
        self._m_frames.inc(flight.batch.count)
        self._advance()

    def _advance(self) -> None:
        last = self.window.advance()
        if last is not None:
            self.cursor.ack(last)
        self._m_inflight.set(self.window.open)

    # -- downlink ----------------------------------------------------------------------------------------
    def _on_message(self, _cl: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if self.downlink is None:
                return
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            tag = self.topics.cmd_tag(topic) if topic is not None else None
            if tag is None:
                self._stray += 1
                if self._stray <= 10 or self._stray % 1000 == 0:
                    log.warning("mqtt %s: message on unexpected topic %r ignored (%d so far)",
                                self.cfg.id, msg._topic[:200], self._stray)  # fmt: skip
                return
            self.downlink.handle(tag, msg.payload, bool(msg.retain), self._ack_ready)
        except Exception:  # noqa: BLE001 - paho would re-raise it out of loop_read and end the thread
            log.exception("mqtt %s: command message not handled", self.cfg.id)

    def _ack_ready(self, ack: Ack) -> None:
        """From any thread: queue the ack for the MQTT thread (paho is only touched there)."""
        if ack.seq is not None:
            self._acks.put(ack)
            self.wake()

    def _send_acks(self) -> None:
        cl = self._client
        while cl is not None:
            try:
                ack = self._acks.get_nowait()
            except Empty:
                return
            assert ack.seq is not None
            try:
                cl.publish(self.topics.ack_topic(ack.seq), ack.payload(), qos=min(1, self.qos))
            except ValueError as e:  # a tag that makes no valid UTF-8 / an over-long topic
                log.error("mqtt %s: ack of command %s not published: %s", self.cfg.id, ack.seq, e)

    # -- stop --------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        cl = self._client
        if cl is None or self.state is not State.CONNECTED:
            self.state = State.IDLE
            self._teardown()
            return
        deadline = time.monotonic() + self.drain_timeout
        self._send_acks()
        while self.window.open and self.state is State.CONNECTED and time.monotonic() < deadline:
            self.heartbeat = time.monotonic()
            self._send_acks()
            self._io(0.05)
        if self.window.open:
            log.info(
                "mqtt %s: %d batches unacknowledged at stop; they are resent next start", self.cfg.id, self.window.open
            )
        if self.state is State.CONNECTED:
            info = cl.publish(self.topics.status, b"offline", qos=min(1, self.granted_qos), retain=True)
            self._status_mid = info.mid
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._status_acked.set()
            end = time.monotonic() + 1.0
            while not self._status_acked.is_set() and self.state is State.CONNECTED and time.monotonic() < end:
                self._io(0.05)
                if self._status_mid is not None and info.is_published():
                    break
            cl.disconnect()
            end = time.monotonic() + 1.0
            while cl.socket() is not None and time.monotonic() < end:
                self._io(0.05)
        log.info("mqtt %s stopped at acked seq %d", self.cfg.id, self.cursor.acked)
