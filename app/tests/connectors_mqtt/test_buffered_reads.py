"""net.mqtt.Client with buffer_reads against a real Mosquitto, driven by a select loop of our own as the
delivery runner drives it: packets cut by every read and packets coalesced in one read are all handled,
each QoS 2 publish is reported once and only in its PUBCOMP, and bytes read ahead are seen as waiting."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_gateway.connectors.mqtt.transport import MqttTransport
from edge_gateway.net.mqtt import Client, PackedProperties, buffer_reads, defer_writes, new_client, pack_properties
from edge_gateway.testkit import LOOPBACK, Mosquitto
from tests.connectors_mqtt.conftest import connector
from tests.consumer import BatchSubscriber

TOPIC = "/edge/t1/gw1/batch"
PUBREC_BYTES = 4  # what Mosquitto answers a QoS 2 PUBLISH with on success: type, length 2, packet id


class Publisher:
    """A client with deferred writes and buffered reads, and a record of what its on_publish saw."""

    def __init__(self, port: int, recv_size: int, inflight: int = 20) -> None:
        self.cl = new_client("buffered-test", tls=False)
        self.cl.max_inflight_messages_set(inflight)
        defer_writes(self.cl)
        buffer_reads(self.cl, recv_size)
        self.published: list[int] = []
        self.states: list[Any] = []  # paho's state of each message when its on_publish came
        self.cl.on_publish = self._on_publish
        self.connected = False
        self.cl.on_connect = lambda *a: setattr(self, "connected", True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
        self.cl.connect(LOOPBACK, port, keepalive=30, properties=props)
        self.step_until(lambda: self.connected)

    def _on_publish(self, cl: mqtt.Client, _ud: object, mid: int, rc: Any, _props: Any) -> None:
        assert not rc.is_failure
        self.published.append(mid)
        self.states.append(cl._out_messages[mid].state)

    def publish(self, seq: int) -> int:
        payload = json.dumps([{"seq": seq}]).encode()
        props = PackedProperties(
            pack_properties("application/json", [("seq_first", str(seq)), ("encoding", "identity")])
        )
        return int(self.cl.publish(TOPIC, payload, qos=2, properties=props).mid)

    def step(self, timeout: float = 0.5) -> None:
        """One turn as the runner's: no wait while bytes wait in the buffer."""
        cl = self.cl
        sock = cl.socket()
        assert sock is not None
        r, w, _ = select.select([sock], [sock] if cl.want_write() else [], [], 0.0 if cl.buffered else timeout)
        if r or cl.buffered:
            cl.loop_read()
        if cl.want_write():
            cl.loop_write()
        cl.loop_misc()

    def step_until(self, done: Any, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, "timed out"
            self.step(0.05)

    def close(self) -> None:
        self.cl.disconnect()
        self.cl.loop_write()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(workdir=tmp_path / "mosq") as b:
        yield b


def _wait_for_bytes(sock: socket.socket, n: int) -> None:
    """Until the broker's answers amount to n bytes in the socket (looked at, not read)."""
    end = time.monotonic() + 10
    while True:
        select.select([sock], [], [], 0.05)
        try:
            if len(sock.recv(65536, socket.MSG_PEEK)) >= n:
                return
        except BlockingIOError:
            pass
        assert time.monotonic() < end, "the broker did not answer"


def _received(sub: BatchSubscriber) -> list[int]:
    return sorted(f["seq"] for m in sub.messages for f in m.frames)


@pytest.mark.parametrize("recv_size", [1, 2, 3, 5, 7])
def test_packets_cut_by_every_read_are_all_handled(broker: Mosquitto, recv_size: int) -> None:
    sub = BatchSubscriber(LOOPBACK, broker.port, filters=(TOPIC,)).start()
    pub = Publisher(broker.port, recv_size)  # CONNACK itself came through reads of recv_size bytes
    try:
        mids = [pub.publish(seq) for seq in range(1, 61)]  # 60 > the in-flight limit: paho queues some
        pub.step_until(lambda: len(pub.published) == len(mids))
        assert sorted(pub.published) == sorted(mids)  # each once
        assert set(pub.states) == {mqtt.mqtt_ms_wait_for_pubcomp}  # only ever on its PUBCOMP
        deadline = time.monotonic() + 10
        while len(_received(sub)) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _received(sub) == list(range(1, 61))
    finally:
        pub.close()
        sub.stop()


def test_acks_coalesced_in_one_read_are_all_handled(broker: Mosquitto) -> None:
    sub = BatchSubscriber(LOOPBACK, broker.port, filters=(TOPIC,)).start()
    pub = Publisher(broker.port, 65536, inflight=40)
    try:
        n = 30
        mids = [pub.publish(seq) for seq in range(1, n + 1)]
        pub.cl.loop_write()  # every PUBLISH in one send (net.mqtt.Client._packet_write)
        sock = pub.cl.socket()
        assert isinstance(sock, socket.socket)
        _wait_for_bytes(sock, n * PUBREC_BYTES)  # the broker answered them all

        pub.cl._packet_read()  # one packet: the read took all thirty PUBRECs off the socket
        assert pub.cl.buffered == (n - 1) * PUBREC_BYTES
        assert select.select([sock], [], [], 0.0)[0] == []  # so only `buffered` says they are there
        transport = MqttTransport(connector(broker.port))
        transport._client = pub.cl
        assert transport.poll().ready  # and the runner's select does not wait on them
        pub.cl.loop_read()
        assert pub.cl.buffered == 0
        assert all(m.state == mqtt.mqtt_ms_wait_for_pubcomp for m in pub.cl._out_messages.values())
        assert pub.published == []  # a PUBREC acknowledges nothing yet

        pub.step_until(lambda: len(pub.published) == n)
        assert sorted(pub.published) == sorted(mids)
        assert set(pub.states) == {mqtt.mqtt_ms_wait_for_pubcomp}
        deadline = time.monotonic() + 10
        while len(_received(sub)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _received(sub) == list(range(1, n + 1))
    finally:
        pub.close()
        sub.stop()


def test_a_new_connection_starts_with_an_empty_buffer(broker: Mosquitto) -> None:
    """Bytes read ahead from a socket are never parsed as the next socket's."""
    pub = Publisher(broker.port, 65536)
    try:
        pub.publish(1)
        pub.cl.loop_write()
        sock = pub.cl.socket()
        assert isinstance(sock, socket.socket)
        _wait_for_bytes(sock, PUBREC_BYTES)
        pub.cl._sock_recv(1)  # half a packet read ahead
        assert pub.cl.buffered == PUBREC_BYTES - 1
        pub.cl.reconnect()
        assert pub.cl.buffered == 0
        pub.connected = False
        pub.step_until(lambda: pub.connected)
        pub.step_until(lambda: len(pub.published) == 1)  # paho resent it on the new link (dup)
    finally:
        pub.close()


def test_paho_reads_are_kept_without_buffer_reads(broker: Mosquitto) -> None:
    """A client left to paho's own loop() (the MQTT source driver) reads as paho does."""
    cl = new_client("plain", tls=False)
    assert isinstance(cl, Client) and cl.recv_size == 0
    cl.connect(LOOPBACK, broker.port)
    try:
        cl.loop(1.0)
        assert cl.is_connected() and cl.buffered == 0
    finally:
        cl.disconnect()
