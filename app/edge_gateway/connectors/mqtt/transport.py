"""The MQTT 5 transport (connector.yml `kind: mqtt5`) under the delivery runner.

Only the wire: paho's external-loop API (`loop_read`, `loop_write`, `loop_misc`) driven by the
runner's select, so every paho call and callback happens on the runner's thread and callbacks
never block. Delivery (window, acks, rewinds, backoff, QoS downgrade) is the runner's.

  * Persistent session: clean_start=False on every connect, the configured client_id,
    SessionExpiryInterval = session_expiry. The broker keeps the command subscription and queues
    the commands sent while the gateway is away, across process restarts too. Within one process
    paho resends its own in-flight QoS1/2 publishes after a reconnect (the client object is kept
    across reconnects; `abort(discard=True)` replaces it).
  * A batch is one PUBLISH on batch_topic (or topic with {tag} when `batch: 1`), content type
    application/json and the user properties of contract.Message. Its final ack is PUBCOMP (QoS2),
    PUBACK (QoS1) or the socket write (QoS0); a failure reason code is a refusal.
  * CONNACK MaximumQoS and ReceiveMaximum go to the runner (contract.Session); paho's own
    in-flight limit is the window plus ACK_RESERVE.
  * Status: retained `online` on status_topic after each CONNACK, `offline` as the last will and
    published before a clean stop (a clean DISCONNECT suppresses the will).
  * Commands: subscribed with retain-as-published (a retained command is seen as retained, and
    refused, however it reaches us) and no-local. The subscription is reconciled with the one the
    resumed session holds (net.session: a changed cmd_topic unsubscribes the old filter). Nothing
    that arrives can end the thread: on_message counts and drops what it cannot hand over. CONNECT
    carries MaximumPacketSize (16 × cmd_max_bytes, at least 16 MiB): the broker drops larger
    messages for us instead of making a small board hold them.
"""

from __future__ import annotations

import json
import logging
import select
import time
from importlib import resources
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_gateway.config.model import Connector
from edge_gateway.connectors.mqtt.topics import Topics
from edge_gateway.delivery.contract import ConnectorPlugin, Events, Message, Poll, Session
from edge_gateway.net.mqtt import (
    Client,
    PackedProperties,
    buffer_reads,
    defer_writes,
    new_client,
    pack_properties,
    read_secret,
)
from edge_gateway.net.session import Options, SessionState

log = logging.getLogger(__name__)

ACK_RESERVE = 8  # in-flight slots kept free for status and command acks
MISC_EVERY = 0.1  # paho's loop_misc (keepalive PINGREQ, PINGRESP timeout) at most this often, not every turn


class MqttTransport:
    kind = "mqtt5"
    keeps_unsettled = True  # paho resends unsettled QoS1/2 publishes after a reconnect (persistent session)

    def __init__(
        self, cfg: Connector, *, window: int = 32, connect_timeout: float = 10.0, state_dir: str | None = None
    ) -> None:
        self.cfg = cfg
        self.topics = Topics.of(cfg)
        self.commands = False
        self.connect_timeout = connect_timeout
        self._window_cfg = max(1, window)
        self._ev: Events | None = None
        self._client: Client | None = None
        self.qos: int = cfg.qos  # effective, for subscriptions and command acks
        self.granted_qos = 2
        self._receive_max = 65535
        self._status_mid: int | None = None
        self._status_acked = False
        self._stray = 0  # messages on topics that are not commands
        key = f"{cfg.host}:{cfg.port} {cfg.client_id}"
        self.session = SessionState.load(state_dir, f"uplink-{cfg.id}", key)
        self._sub_pending: dict[int, tuple[str, str, Options]] = {}  # mid → (subscribe|unsubscribe, filter, opts)
        self._misc_at = 0.0

    def bind(self, events: Events) -> None:
        self._ev = events

    @property
    def ev(self) -> Events:
        assert self._ev is not None, "bind() first"
        return self._ev

    # -- connection ------------------------------------------------------------------------------------
    def _new_client(self) -> Client:
        c = self.cfg
        cl = new_client(c.client_id, tls=c.scheme == "tls", files=c.tls, connect_timeout=self.connect_timeout)
        cl.on_connect = self._on_connect
        cl.on_disconnect = self._on_disconnect
        cl.on_publish = self._on_publish
        cl.on_message = self._on_message
        cl.on_subscribe = self._on_subscribe
        cl.on_unsubscribe = self._on_unsubscribe
        cl.max_inflight_messages_set(min(self._receive_max, self._window_cfg + ACK_RESERVE))
        cl.max_queued_messages_set(0)
        defer_writes(cl)  # written by io() on the runner's select, the window's publishes together
        buffer_reads(cl)  # a window of acks parsed from one recv; poll() reports what waits in the buffer
        cl.will_set(self.topics.status, b"offline", qos=min(1, self.granted_qos), retain=True)
        return cl

    def _credentials(self) -> tuple[str | None, str | None]:
        c = self.cfg
        password = read_secret(c.password_file) if c.password_file else c.password
        return c.username, password

    def open(self) -> None:
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
            rc = cl.connect(
                c.host,
                c.port,
                keepalive=max(1, round(c.keepalive)),
                clean_start=False,  # resume the session: commands queued while we were away are delivered
                properties=props,
            )
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake, unreadable password_file
            raise OSError(f"connect to {c.host}:{c.port}: {e}") from e
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise OSError(f"connect: {mqtt.error_string(rc)}")

    def abort(self, discard: bool = False) -> None:
        """Close the socket (a DISCONNECT first, when it can be written right away)."""
        cl = self._client
        sock = cl.socket() if cl is not None else None
        if cl is not None and sock is not None:
            cl.disconnect()
            cl.loop_write()
            if cl.socket() is not None:
                sock.close()  # type: ignore[union-attr]
        if discard:
            self._client = None

    # -- the runner's select ---------------------------------------------------------------------------------
    def poll(self) -> Poll:
        cl = self._client
        sock = cl.socket() if cl is not None else None
        if cl is None or sock is None:
            return Poll()
        pending = getattr(sock, "pending", None)
        return Poll(
            read=sock,
            write=cl.want_write(),
            # bytes select() cannot see: read by net.mqtt.Client ahead of paho, or decrypted by TLS
            ready=cl.buffered > 0 or (pending is not None and pending() > 0),
        )

    def io(self, readable: bool, writable: bool) -> None:
        cl = self._client
        if cl is None or cl.socket() is None:
            return
        if readable:
            cl.loop_read()
        if cl.socket() is not None and (writable or cl.want_write()):
            cl.loop_write()
        now = time.monotonic()
        if cl.socket() is not None and now >= self._misc_at:  # keepalive: its clock counts in seconds
            self._misc_at = now + MISC_EVERY
            cl.loop_misc()

    # -- publishing ------------------------------------------------------------------------------------------
    def publish(self, msg: Message) -> int:
        cl = self._client
        assert cl is not None
        props = PackedProperties(pack_properties(msg.content_type, msg.properties))
        topic = self.topics.frame_topic(msg.tag) if msg.tag is not None else self.topics.batch
        try:
            info = cl.publish(topic, msg.payload, qos=msg.qos, properties=props)
        except ValueError as e:  # a tag that is not a valid topic level: send it on the batch topic instead
            log.error("mqtt %s: cannot publish on %r (%s); using %s", self.cfg.id, topic, e, self.topics.batch)
            info = cl.publish(self.topics.batch, msg.payload, qos=msg.qos, properties=props)
        return int(info.mid)

    def reply(self, seq: int, payload: bytes) -> None:
        cl = self._client
        if cl is None:
            return
        try:
            cl.publish(self.topics.ack_topic(seq), payload, qos=min(1, self.qos))
        except ValueError as e:  # a tag that makes no valid UTF-8 / an over-long topic
            log.error("mqtt %s: ack of command %s not published: %s", self.cfg.id, seq, e)

    def close(self, deadline: float) -> None:
        """`offline` (retained, waited for up to 1 s), then DISCONNECT (up to 1 s)."""
        cl = self._client
        if cl is None or cl.socket() is None:
            return
        info = cl.publish(self.topics.status, b"offline", qos=min(1, self.granted_qos), retain=True)
        self._status_mid = info.mid
        self._status_acked = info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
        end = min(deadline, time.monotonic() + 1.0)
        while not self._status_acked and cl.socket() is not None and time.monotonic() < end:
            self._step(0.05)
            if info.is_published():
                break
        cl.disconnect()
        end = time.monotonic() + 1.0
        while cl.socket() is not None and time.monotonic() < end:
            self._step(0.05)

    def _step(self, timeout: float) -> None:
        """A select of our own, for close() (the runner's loop has ended)."""
        p = self.poll()
        if p.read is None:
            return
        try:
            r, w, _ = select.select([p.read], [p.read] if p.write else [], [], 0.0 if p.ready else timeout)
        except (OSError, ValueError):
            r, w = [p.read], []
        self.io(bool(r) or p.ready, bool(w))

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self.cfg.scheme}://{self.cfg.host}:{self.cfg.port}",
            "client_id": self.cfg.client_id,
            "subscriptions": sorted(self.session.subs),
            "stray": self._stray,
        }

    # -- paho callbacks (inside loop_read / loop_write / publish) ----------------------------------------------
    def _on_connect(self, cl: mqtt.Client, _ud: object, flags: Any, rc: ReasonCode, props: Properties | None) -> None:
        if cl is not self._client:
            return
        if rc.is_failure:
            self.ev.on_disconnected(f"broker refused the connection: {rc}")
            return
        self.granted_qos = int(getattr(props, "MaximumQoS", 2))
        self._receive_max = int(getattr(props, "ReceiveMaximum", 65535))
        self.qos = min(int(self.cfg.qos), self.granted_qos)
        resumed = bool(flags.session_present)
        log.info(
            "mqtt %s connected to %s:%d (session %s, qos %d)",
            self.cfg.id,
            self.cfg.host,
            self.cfg.port,
            "resumed" if resumed else "new",
            self.qos,
            extra={"session_present": resumed, "qos": self.qos},
        )
        if not self.ev.on_connected(Session(self.granted_qos, self._receive_max, resumed)):
            return
        cl.publish(self.topics.status, b"online", qos=min(1, self.granted_qos), retain=True)
        self._reconcile(cl, resumed)

    def _wanted(self) -> dict[str, Options]:
        if not self.commands:
            return {}
        return {self.topics.cmd_filter: {"qos": min(1, self.qos), "nl": True, "rap": True}}

    def _reconcile(self, cl: mqtt.Client, session_present: bool) -> None:
        """Make the session's subscriptions the configured ones (net.session)."""
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
            why = f"command subscription {f!r} refused: {rcs[0]}"
            log.error("mqtt %s: %s", self.cfg.id, why)
            self.ev.on_error(why)
            self.session.unsubscribed(f)
            return
        self.session.subscribed(f, o)

    def _on_unsubscribe(self, _cl: mqtt.Client, _ud: object, mid: int, _rcs: Any, _props: Any) -> None:
        what = self._sub_pending.pop(mid, None)
        if what is not None:
            self.session.unsubscribed(what[1])

    def _on_disconnect(self, cl: mqtt.Client, _ud: object, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        if cl is not self._client:
            return
        self.ev.on_disconnected(f"connection lost: {rc}")

    def _on_publish(self, _cl: mqtt.Client, _ud: object, mid: int, rc: ReasonCode, _props: Any) -> None:
        if mid == self._status_mid:
            self._status_acked = True
            return
        self.ev.on_published(mid, str(rc) if rc.is_failure else None)

    def _on_message(self, _cl: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if not self.commands:
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
            self.ev.on_command(tag, msg.payload, bool(msg.retain))
        except Exception:  # noqa: BLE001 - paho would re-raise it out of loop_read and end the thread
            log.exception("mqtt %s: command message not handled", self.cfg.id)


def factory(cfg: Connector, **kw: Any) -> MqttTransport:
    """The `edge_gateway.connectors` entry point `mqtt5`."""
    return MqttTransport(cfg, **kw)


def _build(b: Any, ident: str, c: dict[str, Any], src: Any) -> Connector | None:
    """connector.yml's builder (config.py), imported where the loader runs: it reads the YAML source."""
    from edge_gateway.connectors.mqtt import config

    return config.build(b, ident, c, src)


PLUGIN = ConnectorPlugin(
    "mqtt5",
    factory,
    schema=json.loads(resources.files(__package__).joinpath("schema.json").read_text()),
    build=_build,
)
