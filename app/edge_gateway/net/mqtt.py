"""The one place that builds a paho MQTT 5 client (VERSION2 callbacks) with its TLS settings.

Used by the MQTT connector (connectors/mqtt) and the MQTT source driver alike. TLS follows paho's
defaults: CERT_REQUIRED with hostname check, against `ca` or else the system CA store, with an
optional client certificate.

Two costs of paho 2.1.0 on the QoS 2 hot path are avoided here (a profile of the uplink at 200 k
frames/s had a third of the runner thread in paho's `Properties`): a `Properties` object builds two
tables of every MQTT 5 property when it is created and looks each name up by a linear scan when it
is set or packed. So `PackedProperties` carries PUBLISH properties packed once by `pack_properties`,
and `Client` answers a bare PUBACK/PUBCOMP (no reason code, no properties: what a broker sends for
a success) with one shared empty `Properties` and success `ReasonCode` instead of new ones. paho also
makes one send() system call per packet (two per QoS 2 batch: PUBLISH, PUBREL): `Client` writes
everything queued in one, and a caller with its own select loop (the delivery runner) can let
packets queue up until its loop writes them (`defer_writes`). On the way in, paho reads each
packet's type byte and each remaining-length byte with a recv() of its own (three system calls for a
4-byte PUBREC, and a fourth that fails to end the loop): for a caller with its own select loop,
`Client` can read what the socket holds in one recv and serve paho's reads from that buffer
(`buffer_reads`; `buffered` says how much waits there, where a select cannot see it, so paho's own
`loop()` must not be used with it).
"""

from __future__ import annotations

import functools
import ssl
import struct
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

RECV_SIZE = 65536  # one read takes what a window of acks (4 bytes each) and a few commands amount to
_CONTENT_TYPE = 0x03  # MQTT 5 property identifiers (§2.2.2.2)
_USER_PROPERTY = 0x26


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError(f"MQTT string of {len(b)} bytes (at most 65535)")
    return struct.pack("!H", len(b)) + b


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


@functools.lru_cache(maxsize=256)
def _packed_name(ident: int, name: str) -> bytes:
    """A property identifier and a string that recurs on every message (content type, user property
    names, `zstd`)."""
    return bytes([ident]) + _utf8(name)


def pack_properties(content_type: str | None, user: Iterable[tuple[str, str]]) -> bytes:
    """PUBLISH properties as on the wire (length first): the bytes paho's `Properties.pack()` makes of
    ContentType and UserProperty (paho packs them in that order too)."""
    parts = [] if content_type is None else [_packed_name(_CONTENT_TYPE, content_type)]
    for k, v in user:  # once per batch: _utf8 inlined
        b = v.encode("utf-8")
        if len(b) > 0xFFFF:
            raise ValueError(f"MQTT string of {len(b)} bytes (at most 65535)")
        parts += (_packed_name(_USER_PROPERTY, k), len(b).to_bytes(2, "big"), b)
    body = b"".join(parts)
    return _varint(len(body)) + body


class PackedProperties(Properties):
    """PUBLISH properties packed beforehand: paho only ever calls `pack()` on an outgoing message's
    properties (also when it resends it after a reconnect)."""

    packed: bytes

    def __init__(self, packed: bytes) -> None:  # no super().__init__: its tables are what we avoid
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "packed", packed)

    def pack(self) -> bytes:
        return self.packed

    def __str__(self) -> str:  # paho's debug log shows it
        return f"[packed {len(self.packed)} bytes]"


class Client(mqtt.Client):
    """paho's client, with bare PUBACK/PUBCOMP handled without allocating, queued packets written
    together and reads buffered (see the module docstring)."""

    recv_size = 0  # 0: paho's own reads; else one recv of up to this many bytes feeds paho's (buffer_reads)
    _rbuf = b""  # bytes read from `_rsock` and not yet handed to paho, from `_rpos` on
    _rpos = 0
    _rsock: object = None

    @property
    def buffered(self) -> int:
        """Bytes read from the current socket that paho has not parsed yet: the caller must run
        `loop_read()` again before it waits on the socket (they are no longer in it)."""
        return len(self._rbuf) - self._rpos if self._rsock is self._sock and self._sock is not None else 0

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho's reads (1 byte, 1 byte, the rest of the packet) served from one recv of up to
        `recv_size` bytes; a buffer belongs to the socket it was read from (a reconnect starts empty).
        Errors and the end of the stream (b"") come from paho's own `_sock_recv`, as before."""
        if not self.recv_size:
            return super()._sock_recv(bufsize)
        if not self.buffered:
            data = super()._sock_recv(self.recv_size)
            if not data:
                return data
            self._rbuf, self._rpos, self._rsock = data, 0, self._sock
        pos = self._rpos
        out = self._rbuf[pos : pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def _packet_read(self) -> MQTTErrorCode:
        """A packet that lies whole in the read buffer goes to paho's `_packet_handle` in one step;
        paho's own `_packet_read` (a byte at a time through `_sock_recv`) takes every other case: the
        first packet after a wait (its read fills the buffer), a packet cut by the end of a read, a
        malformed length, a client without `buffer_reads`."""
        whole = self._whole_packet() if self._in_packet["command"] == 0 else None
        if whole is None:
            return super()._packet_read()
        self._set_in_packet(*whole)
        rc = self._packet_handle()
        self._set_in_packet(0, 0, bytearray())  # as paho leaves it between packets
        with self._msgtime_mutex:
            self._last_msg_in = mqtt.time_func()
        return rc

    def _set_in_packet(self, command: int, length: int, body: bytearray) -> None:
        """paho's state of the packet being read: `command` 0 = none, else one read whole."""
        self._in_packet = {"command": command, "have_remaining": 1 if command else 0, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": length, "packet": body, "to_process": 0,
                           "pos": 0}  # fmt: skip

    def _whole_packet(self) -> tuple[int, int, bytearray] | None:
        """(type byte, remaining length, body) of the next buffered packet when all of it is there;
        the buffer then starts after it."""
        if not self.buffered:
            return None
        buf, pos = self._rbuf, self._rpos
        length, shift, i = 0, 0, pos + 1
        while i < len(buf) and i <= pos + 4:  # the remaining length: at most 4 bytes of 7 bits
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                if i + length > len(buf):
                    return None
                self._rpos = i + length
                return buf[pos], length, bytearray(buf[i : i + length])
        return None

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        """paho logs every packet it sends or receives (four per QoS 2 batch) through here: return at
        once when nobody listens (no `on_log`, no `enable_logger`)."""
        if self._on_log is not None or self._logger is not None:
            super()._easy_log(level, fmt, *args)

    _NO_PROPS = {t: Properties(t) for t in (PacketTypes.PUBACK, PacketTypes.PUBCOMP)}
    _SUCCESS = {t: ReasonCode(t) for t in (PacketTypes.PUBACK, PacketTypes.PUBCOMP)}

    def _handle_pubackcomp(self, cmd: Literal["PUBACK"] | Literal["PUBCOMP"]) -> MQTTErrorCode:
        if self._protocol != mqtt.MQTTv5 or self._in_packet["remaining_length"] != 2:
            return super()._handle_pubackcomp(cmd)  # a reason code or properties: paho's own way
        packet_type = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
        (mid,) = struct.unpack("!H", self._in_packet["packet"][:2])
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._SUCCESS[packet_type], self._NO_PROPS[packet_type])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _update_inflight(self) -> MQTTErrorCode:
        """After each PUBACK/PUBCOMP paho walks every unacknowledged message for one it queued past
        its in-flight limit. When its in-flight count covers every message it holds, none is queued
        (nor QoS 0): nothing to walk. (The count only ever runs low — paho does not recount after a
        reconnect — and then paho's own walk runs.)"""
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def _packet_write(self) -> MQTTErrorCode:
        """Every queued packet in one send (paho sends each on its own). A QoS 0 PUBLISH or a DISCONNECT
        among them (paho runs callbacks when one is written) leaves it to paho."""
        out = self._out_packet
        if len(out) < 2 or any(p["command"] & 0xF0 == mqtt.DISCONNECT or
                               (p["command"] & 0xF0 == mqtt.PUBLISH and p["qos"] == 0) for p in out):  # fmt: skip
            return super()._packet_write()
        data = b"".join([memoryview(p["packet"])[p["pos"] :] if p["pos"] else p["packet"] for p in out])
        try:
            n = self._sock_send(data)
        except (AttributeError, ValueError):  # no socket (any more): as paho does
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        while n > 0:  # what was written leaves the queue; a packet cut short stays, at its new position
            p = out[0]
            k = min(n, p["to_process"])
            p["pos"] += k
            p["to_process"] -= k
            n -= k
            if p["to_process"] == 0:
                out.popleft()
        with self._msgtime_mutex:
            self._last_msg_out = mqtt.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class Tls(Protocol):
    @property
    def ca(self) -> str | None: ...

    @property
    def client_cert(self) -> str | None: ...

    @property
    def client_key(self) -> str | None: ...


def new_client(client_id: str, *, tls: bool, files: Tls | None = None, connect_timeout: float = 5.0) -> Client:
    """A paho MQTT 5 client; `tls` switches TLS on, with `files` (config.model.TlsFiles) if given."""
    cl = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    cl.connect_timeout = connect_timeout
    if tls:
        cl.tls_set(
            ca_certs=files.ca if files else None,
            certfile=files.client_cert if files else None,
            keyfile=files.client_key if files else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return cl


def defer_writes(cl: mqtt.Client) -> None:
    """Packets wait in paho's queue for the caller's `loop_write()` (its select sees `want_write()`)
    instead of being sent the moment they are made, so a window of publishes goes out in one write."""
    cl.on_socket_register_write = lambda *_: None


def buffer_reads(cl: Client, size: int = RECV_SIZE) -> None:
    """Incoming packets parsed from one recv of what the socket holds. Only for a caller whose select
    loop runs `loop_read()` again, without waiting, while `cl.buffered` is not 0 (the delivery runner
    through connectors.mqtt.transport); paho's own `loop()` would wait on a socket already read."""
    cl.recv_size = size


def read_secret(path: str) -> str:
    """A password file, read at every connect (rotation needs no reload); the line end is dropped."""
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")
