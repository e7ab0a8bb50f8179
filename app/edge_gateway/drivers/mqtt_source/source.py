"""The MQTT source worker: one paho MQTT v5 client thread per source endpoint.

The thread owns the paho client and runs its network loop itself, with its own reconnect loop
(exponential backoff with jitter, not paho's jitter-free one). The hand-off to the bus has two
halves on that same thread:

  * paho's `on_message` callback only attributes the message to a subscription and appends it to
    a bounded queue — it never decodes, never touches the bus, never blocks. A full queue drops the
    message and counts it per subscription;
  * between two turns of the network loop the forwarder half takes what is queued — only while
    the bus is not paused — maps topics to tags, decodes payloads and publishes the frames to the
    FrameBus. While the bus is paused it takes nothing, so the queue fills and its bound does the
    dropping.

One thread rather than a network thread plus a forwarder thread: measured on 2 cores, handing
every burst to a second thread cost up to ~80 ms of wake-up latency under the GIL while paho was
busy reading, enough to overflow a 1000-message queue with the bus idle (bench_mqtt_source).

Session: MQTT v5, clean_start=False on every connect with the endpoint's client_id and
session_expiry, so the broker keeps our session — and queues QoS 1/2 messages for us — across
lost links *and* gateway restarts (a restart, a reload of the driver). The session's
subscriptions are reconciled with the configured ones on every CONNACK (net.session: the set
we subscribed is kept in the WAL directory; what was removed is unsubscribed, what is new or
changed is subscribed, all of it when the session is new). Each subscription has its own MQTT v5
subscription identifier, which tells us which subscription (hence which driver) every message
arrived through; identifiers are kept with the session, so messages the broker queued under an
old identifier are still attributed right, and a removed filter's identifier is never reused.

Health per driver: `down` while not connected; `degraded` from a drop until the queue has
drained and `recover` seconds passed without another drop (or while a subscription is refused
by the broker); `ok` otherwise.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import (
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTErrorCode,
    MQTTMessage,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.core.frame import GOOD, Frame, bad, now_ms
from edge_gateway.drivers.mqtt_source import metrics, topics
from edge_gateway.drivers.mqtt_source.mapping import TopicMap
from edge_gateway.drivers.mqtt_source.model import MqttDriver, MqttEndpoint, MqttTag
from edge_gateway.drivers.mqtt_source.payload import Malformed
from edge_gateway.net.mqtt import new_client
from edge_gateway.net.session import Options, SessionState

log = logging.getLogger(__name__)

HEALTH_CODE = {"ok": 0, "degraded": 1, "down": 2}
HEALTH_EVERY = 0.05  # seconds between health evaluations (gauges, transitions in the log)
LOOP_TIMEOUT = 0.1  # paho select() timeout; the client thread's heartbeat period
BATCH = 512  # messages taken from the queue per bus publish
STOP_DRAIN = 2.0  # seconds a stopping worker keeps handing queued messages to the bus
WARN_EVERY = 10.0  # at most one malformed-payload warning per driver this often


class ReadOnlyTag(Exception):
    """A cloud command for a tag of an MQTT source."""


@dataclass(eq=False)
class _Driver:
    cfg: MqttDriver
    map: TopicMap
    pending: int = 0  # messages of this driver in the hand-off queue (guarded by the source's lock)
    last_drop: float | None = None  # monotonic time of the last drop of the current episode (lock)
    health: str = "down"
    refused: list[str] = field(default_factory=list)  # subscriptions the broker refused
    received: int = 0
    dropped: int = 0
    frames: int = 0
    malformed: int = 0
    unmapped: int = 0
    retained_ignored: int = 0
    next_warn: float = 0.0

    def __post_init__(self) -> None:
        did = self.cfg.id
        self.m_frames = metrics.FRAMES.labels(driver_id=did)
        self.m_unmapped = metrics.UNMAPPED.labels(driver_id=did)
        self.m_retained = metrics.RETAINED_IGNORED.labels(driver_id=did)
        self.m_queued = metrics.QUEUED.labels(driver_id=did)
        self.m_health = metrics.HEALTH.labels(driver_id=did)
        self.m_health.set(HEALTH_CODE["down"])

    @property
    def id(self) -> str:
        return self.cfg.id


@dataclass(eq=False)
class _Sub:
    ident: int  # MQTT v5 subscription identifier, 1-based over this client
    filter: str
    qos: int
    driver: _Driver
    levels: topics.Levels = ()
    granted: int | None = None  # the QoS the broker granted, None before SUBACK or when refused
    error: str | None = None
    received: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.levels = topics.levels(self.filter)
        self.m_received = metrics.RECEIVED.labels(driver_id=self.driver.id, subscription=self.filter)
        self.m_dropped = metrics.DROP.labels(driver_id=self.driver.id, subscription=self.filter)


# (subscription, ts ms, topic, payload, qos, retain, dup)
_Item = tuple[_Sub, int, str, bytes, int, bool, bool]


class MqttSource(threading.Thread):
    """Subscribes on one MQTT endpoint for all of its `proto: mqtt` drivers and publishes the
    mapped tags to the bus. Same worker interface as a Modbus line: start(), stop(),
    heartbeat, status(), submit_write() (refused: source tags are read-only)."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        drivers: Sequence[MqttDriver],
        tags: Iterable[MqttTag],
        bus: FrameBus,
        state_dir: str | None = None,
    ) -> None:
        super().__init__(name=f"mqtt-src-{endpoint.id}", daemon=True)
        self.endpoint = endpoint
        self._bus = bus
        tags = list(tags)
        self._drivers = {d.id: _Driver(d, TopicMap(t for t in tags if t.driver_id == d.id)) for d in drivers}
        key = f"{endpoint.host}:{endpoint.port} {endpoint.client_id}"
        self.session = SessionState.load(state_dir, f"source-{endpoint.id}", key)
        self._subs: list[_Sub] = []
        idents: dict[str, int] = {}
        for d in self._drivers.values():
            for s in d.cfg.cfg.subscriptions:
                ident = idents.setdefault(s.filter, self.session.ident(s.filter))  # one filter, one subscription
                self._subs.append(_Sub(ident, s.filter, s.qos, d))
        self._by_ident = {s.ident: s for s in self._subs}
        self._lock = threading.Lock()
        self._queue: deque[_Item] = deque()
        self._carry: list[tuple[Frame, _Driver]] = []  # frames the bus had no room for yet
        self._stop_evt = threading.Event()
        self._stopping = False  # the client is gone: what is queued is handed over, then the thread ends
        self._next_health = 0.0
        self._client: Client | None = None
        self._sub_ids = True  # the broker supports subscription identifiers (CONNACK)
        self._pending_subs: dict[int, tuple[_Sub, Options]] = {}  # SUBSCRIBE mid → subscription, until SUBACK
        self._pending_unsubs: dict[int, str] = {}  # UNSUBSCRIBE mid → filter, until UNSUBACK
        self._attempt = 0
        self.connected = False
        self.session_resumed = False  # the last CONNACK had session_present: the broker kept our session
        self.state = "starting"  # connecting | connected | backoff | stopped
        self.last_error: str | None = None
        self.reconnects = 0
        self.stray = 0
        # Stamped at every turn of the network loop and of the backoff wait (at least every 0.1 s),
        # except inside a connect attempt (at most paho's 5 s connect timeout).
        self.heartbeat = time.monotonic()
        self._m_connected = metrics.CONNECTED.labels(endpoint_id=endpoint.id)
        self._m_reconnects = metrics.RECONNECTS.labels(endpoint_id=endpoint.id)
        self._m_stray = metrics.STRAY.labels(endpoint_id=endpoint.id)
        self._m_connected.set(0)

    # -- worker interface ---------------------------------------------------------------------------
    @property
    def driver_ids(self) -> tuple[str, ...]:
        return tuple(self._drivers)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout)

    def submit_write(self, variable: object, value: object) -> Future[None]:
        fut: Future[None] = Future()
        tag = getattr(variable, "tag", variable)
        fut.set_exception(ReadOnlyTag(f"{tag}: MQTT source tags are read-only"))
        return fut

    def update_tags(self, driver_id: str, tags: Iterable[MqttTag]) -> None:
        """Swap a driver's topic map (hot reload of variables.yml); subscriptions are unchanged."""
        self._drivers[driver_id].map = TopicMap(tags)

    def health(self, driver_id: str) -> str:
        return self._health_of(self._drivers[driver_id], time.monotonic())

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "endpoint": self.endpoint.id,
            "proto": "mqtt",
            "broker": f"{self.endpoint.scheme}://{self.endpoint.host}:{self.endpoint.port}",
            "state": self.state,
            "connected": self.connected,
            "session": "resumed" if self.session_resumed else "new",
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "stray": self.stray,
            "drivers": {
                d.id: {
                    "health": self._health_of(d, now),
                    "queued": d.pending,
                    "queue": d.cfg.cfg.queue,
                    "received": d.received,
                    "frames": d.frames,
                    "dropped": d.dropped,
                    "malformed": d.malformed,
                    "unmapped": d.unmapped,
                    "retained_ignored": d.retained_ignored,
                    "subscriptions": [
                        {
                            "filter": s.filter,
                            "qos": s.qos,
                            "granted": s.granted,
                            "error": s.error,
                            "received": s.received,
                            "dropped": s.dropped,
                        }
                        for s in self._subs
                        if s.driver is d
                    ],
                }
                for d in self._drivers.values()
            },
        }

    # -- the client thread ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                self._tick()
                if self._connect():
                    self._serve()
                if self._stop_evt.is_set():
                    break
                self._set_connected(False)
                self._backoff()
        finally:
            self._shutdown()

    def _connect(self) -> bool:
        self.state = "connecting"
        try:
            client = self._client or self._make_client()
            self._credentials(client)
            rc = client.reconnect()
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake, unreadable secret
            self.last_error = f"connect: {e}"
            log.debug("mqtt source %s: %s", self.endpoint.id, self.last_error)
            return False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.last_error = f"connect: {rc.name}"
            return False
        return True

    def _serve(self) -> None:
        assert self._client is not None
        while not self._stop_evt.is_set():
            rc = self._client.loop(LOOP_TIMEOUT)
            self._tick()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self.connected:
                    self.last_error = f"link lost: {rc.name}"
                log.warning("mqtt source %s: %s", self.endpoint.id, self.last_error)
                return

    def _backoff(self) -> None:
        bk = self.endpoint.backoff
        delay = min(bk.max, bk.base * (2 ** min(self._attempt, 30)))
        delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not cryptography
        self._attempt += 1
        self.reconnects += 1
        self._m_reconnects.inc()
        self.state = "backoff"
        deadline = time.monotonic() + delay
        while not self._stop_evt.is_set():
            now = self._tick()
            if now >= deadline:
                return
            self._stop_evt.wait(min(LOOP_TIMEOUT, deadline - now))

    def _tick(self) -> float:
        """Between two turns of the loop: stamp the heartbeat, forward what is queued, and look at
        health now and then. Returns the time."""
        now = time.monotonic()
        self.heartbeat = now
        if self._queue or self._carry:
            self._forward()
        if now >= self._next_health:
            self._next_health = now + HEALTH_EVERY
            self._update_health(now)
        return now

    def _make_client(self) -> Client:
        ep = self.endpoint
        c = new_client(ep.client_id, tls=ep.scheme == "mqtts", files=ep.tls, connect_timeout=5.0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(ep.session_expiry)
        c.connect_async(
            ep.host,
            ep.port,
            keepalive=max(1, round(ep.keepalive)),
            clean_start=False,  # resume our session: what the broker queued while we were away arrives
            properties=props,
        )
        self._client = c
        return c

    def _credentials(self, c: Client) -> None:
        """Read at every attempt, so a rotated password file needs no reload."""
        ep = self.endpoint
        password = ep.password
        if ep.password_file:
            with open(ep.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        if ep.username is not None or password is not None:
            c.username_pw_set(ep.username, password)

    def _shutdown(self) -> None:
        c = self._client
        if c is not None and self.connected:
            c.disconnect()
            deadline = time.monotonic() + 1.0
            while self.connected and time.monotonic() < deadline:
                if c.loop(LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self._set_connected(False)
        self.state = "stopped"
        self._stopping = True
        give_up = time.monotonic() + STOP_DRAIN
        while self._queue or self._carry:
            if time.monotonic() >= give_up:
                self._abandon()
                break
            self._forward()
            if self._queue or self._carry:
                time.sleep(0.01)  # the bus is paused: give the WAL writer a moment
        self._update_health(time.monotonic())

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._m_connected.set(1 if up else 0)
        if up:
            self.state = "connected"

    # -- paho callbacks: on the client thread, must never block -------------------------------------------
    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.error("mqtt source %s: %s", self.endpoint.id, self.last_error)
            return
        self._attempt = 0
        self._sub_ids = getattr(props, "SubscriptionIdentifierAvailable", 1) != 0
        self.session_resumed = bool(flags.session_present)
        self._set_connected(True)
        log.info(
            "mqtt source %s: connected to %s:%s (session %s)",
            self.endpoint.id,
            self.endpoint.host,
            self.endpoint.port,
            "resumed" if flags.session_present else "new",
        )
        self._reconcile(client, bool(flags.session_present))

    def _options(self, s: _Sub) -> Options:
        take = s.driver.cfg.cfg.retained == "take"
        rh = SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE if take else SubscribeOptions.RETAIN_DO_NOT_SEND
        return {"qos": s.qos, "rh": rh, "id": s.ident if self._sub_ids else None}

    def _reconcile(self, client: Client, session_present: bool) -> None:
        """Make the session's subscriptions the configured ones (net.session)."""
        self._pending_subs.clear()  # SUBACKs lost with the previous link never come
        self._pending_unsubs.clear()
        by_filter = {s.filter: s for s in self._subs}  # the same filter twice is one subscription
        wanted = {f: self._options(s) for f, s in by_filter.items()}
        gone, new = self.session.plan(wanted, session_present)
        for f in gone:
            log.info("mqtt source %s: unsubscribing %r (no longer configured)", self.endpoint.id, f)
            _, mid = client.unsubscribe(f)
            if mid is not None:
                self._pending_unsubs[mid] = f
        for s in self._subs:
            if s.filter not in new:
                s.granted, s.error = self.session.granted(s.filter), None  # kept by the broker
                if s.granted is None:
                    s.granted = s.qos
        for f in new:
            s = by_filter[f]
            o = wanted[f]
            for t in self._subs:
                if t.filter == f:
                    t.granted, t.error = None, None
            opts = SubscribeOptions(qos=o["qos"], retainHandling=o["rh"])
            sp = None
            if o["id"] is not None:
                sp = Properties(PacketTypes.SUBSCRIBE)
                sp.SubscriptionIdentifier = o["id"]
            _, mid = client.subscribe(f, options=opts, properties=sp)
            if mid is not None:
                self._pending_subs[mid] = (s, o)

    def _on_unsubscribe(self, client: Client, userdata: Any, mid: int, rcs: Any, props: Properties | None) -> None:
        f = self._pending_unsubs.pop(mid, None)
        if f is not None:
            self.session.unsubscribed(f)

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        pending = self._pending_subs.pop(mid, None)
        if pending is None or not rcs:
            return
        first, opts = pending
        rc = rcs[0]
        if rc.is_failure:
            self.session.unsubscribed(first.filter)
        else:
            self.session.subscribed(first.filter, {**opts, "granted": rc.value})
        for s in self._subs:
            if s.filter != first.filter:
                continue
            d = s.driver
            if rc.is_failure:
                s.error = str(rc)
                if s.filter not in d.refused:
                    d.refused.append(s.filter)
                log.error("mqtt source %s: subscription %r refused: %s", d.id, s.filter, rc)
                continue
            s.granted = rc.value
            if s.filter in d.refused:
                d.refused.remove(s.filter)
            if rc.value < s.qos:
                log.warning("mqtt source %s: %r granted QoS %d instead of %d", d.id, s.filter, rc.value, s.qos)

    def _on_disconnect(
        self, client: Client, userdata: Any, flags: DisconnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        if self.connected and not self._stop_evt.is_set():
            self.last_error = f"disconnected: {rc}"
        self._set_connected(False)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        try:
            self._accept(msg)
        except Exception:  # noqa: BLE001 - a bug here must not kill the network loop; logged with traceback
            log.exception("mqtt source %s: message on %r not handled", self.endpoint.id, msg.topic)

    def _accept(self, msg: MQTTMessage) -> None:
        ts = now_ms()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._stray()
            return
        subs = self._subs_of(msg, topic)
        if not subs:
            self._stray()
            return
        for s in subs:
            d = s.driver
            s.received += 1
            d.received += 1
            s.m_received.inc()
            if msg.retain and d.cfg.cfg.retained == "ignore":
                d.retained_ignored += 1
                d.m_retained.inc()
                continue
            with self._lock:
                full = d.pending >= d.cfg.cfg.queue
                if full:
                    d.last_drop = time.monotonic()
                else:
                    d.pending += 1
                    self._queue.append((s, ts, topic, msg.payload, msg.qos, msg.retain, msg.dup))
            if full:
                s.dropped += 1
                d.dropped += 1
                s.m_dropped.inc()

    def _subs_of(self, msg: MQTTMessage, topic: str) -> list[_Sub]:
        """The subscriptions a message came through, at most one per driver (a driver whose
        filters overlap gets one copy per matching filter from the broker, which lint warns of)."""
        ids = getattr(msg.properties, "SubscriptionIdentifier", None) if msg.properties is not None else None
        if ids:
            found = [self._by_ident[i] for i in (ids if isinstance(ids, list) else [ids]) if i in self._by_ident]
        else:
            lv = topics.levels(topic)
            found = [s for s in self._subs if topics.match(s.levels, lv) is not None]
        out: list[_Sub] = []
        for s in found:
            if all(o.driver is not s.driver for o in out):
                out.append(s)
        return out

    def _stray(self) -> None:
        self.stray += 1
        self._m_stray.inc()

    # -- the forwarder half, on the same thread ------------------------------------------------------------
    def _forward(self) -> None:
        """Hand queued messages to the bus as frames, unless the bus is paused."""
        if self._bus.paused:
            return
        self._carry = self._push(self._carry)
        while not self._carry and self._queue:
            self._carry = self._push(self._frames(self._take(BATCH)))

    def _take(self, n: int) -> list[_Item]:
        items: list[_Item] = []
        q = self._queue
        with self._lock:
            while q and len(items) < n:
                item = q.popleft()
                item[0].driver.pending -= 1
                items.append(item)
        return items

    def _frames(self, items: list[_Item]) -> list[tuple[Frame, _Driver]]:
        out: list[tuple[Frame, _Driver]] = []
        for s, ts, topic, payload, qos, retain, dup in items:
            d = s.driver
            route = d.map.route(topic)
            if not route:
                d.unmapped += 1
                d.m_unmapped.inc()
                continue
            meta: dict[str, object] = {"topic": topic, "qos": qos, "retain": retain, "dup": dup}
            for tag, target in route:
                if tag is None:
                    self._malformed(d, "tag", f"topic {topic!r} gives no valid tag for {target.spec.tag!r}")
                    continue
                try:
                    frame = Frame(0, ts, tag, target.decoder(payload), GOOD, meta=meta)
                except Malformed as e:
                    self._malformed(d, e.reason, f"{tag} on {topic!r}: {e}")
                    q = "range" if e.reason == "range" else "scale" if e.reason == "scale" else "malformed"
                    frame = Frame(0, ts, tag, None, bad(q), meta=meta)
                out.append((frame, d))
        return out

    def _malformed(self, d: _Driver, reason: str, message: str) -> None:
        d.malformed += 1
        metrics.MALFORMED.labels(driver_id=d.id, reason=reason).inc()
        now = time.monotonic()
        if now >= d.next_warn:
            d.next_warn = now + WARN_EVERY
            log.warning("mqtt source %s: malformed payload (%s): %s", d.id, reason, message)

    def _push(self, frames: list[tuple[Frame, _Driver]]) -> list[tuple[Frame, _Driver]]:
        """Publish what the bus has room for; the rest is carried to the next round (no loss)."""
        if not frames:
            return frames
        room = self._bus.capacity - len(self._bus)
        if room <= 0:
            return frames
        take = frames[:room]
        n = self._bus.publish([f for f, _ in take])
        for _, d in take[:n]:
            d.frames += 1
            d.m_frames.inc()
        return take[n:] + frames[len(take) :]

    def _abandon(self) -> None:
        """Stopping while the bus stays paused: what is left is dropped, counted, and said so."""
        carry, self._carry = self._carry, []
        items = self._take(len(self._queue))
        for s, *_ in items:
            s.dropped += 1
            s.driver.dropped += 1
            s.m_dropped.inc()
        if items or carry:
            log.warning(
                "mqtt source %s: stopped with the bus paused; dropped %d queued messages and %d frames",
                self.endpoint.id,
                len(items),
                len(carry),
            )

    def _health_of(self, d: _Driver, now: float) -> str:
        if not self.connected:
            return "down"
        if d.refused:
            return "degraded"
        with self._lock:
            last = d.last_drop
            if last is not None and d.pending == 0 and now - last >= d.cfg.cfg.recover:
                d.last_drop = last = None  # the episode is over
        return "ok" if last is None else "degraded"

    def _update_health(self, now: float) -> None:
        for d in self._drivers.values():
            h = self._health_of(d, now)
            d.m_queued.set(d.pending)
            if h != d.health:
                level = logging.INFO if h == "ok" or self._stopping else logging.WARNING
                log.log(level, "mqtt source %s: health %s -> %s", d.id, d.health, h, extra={"driver_id": d.id})
                d.health = h
                d.m_health.set(HEALTH_CODE[h])


def start_source(
    endpoint: MqttEndpoint,
    drivers: Sequence[MqttDriver],
    tags: Iterable[MqttTag],
    bus: FrameBus,
    state_dir: str | None = None,
) -> MqttSource:
    """Start the client thread of one MQTT source endpoint; its session state lives in `state_dir`."""
    src = MqttSource(endpoint, drivers, tags, bus, state_dir)
    src.start()
    return src
