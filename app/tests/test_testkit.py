"""The test kit itself: the broker and the pty pair are real and carry bytes."""

from __future__ import annotations

import os
import queue
import socket
import threading
from pathlib import Path

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

from edge_gateway.testkit import LOOPBACK, Mosquitto, PtyPair


def _listeners(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on `port`, from /proc/net/tcp{,6} (every family)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = TCP_LISTEN
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four host-order 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _round_trip(port: int, topic: str) -> bytes:
    """Subscribe, publish QoS 1 on the same broker, return what the subscriber got."""
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    sub = Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{topic}", protocol=MQTTv5)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.put(msg.payload)
    sub.connect(LOOPBACK, port)
    sub.loop_start()
    pub = Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic}", protocol=MQTTv5)
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(5), "no SUBACK"
        pub.connect(LOOPBACK, port)
        pub.loop_start()
        pub.publish(topic, b"hello " + topic.encode(), qos=1).wait_for_publish(5)
        return got.get(timeout=5)
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


def test_mosquitto_listens_on_loopback_and_restarts(mosquitto: Mosquitto) -> None:
    assert mosquitto.proc is not None
    first_pid = mosquitto.proc.pid
    assert _listeners(mosquitto.port) == {"127.0.0.1"}  # not 0.0.0.0, not ::
    with socket.socket() as s:  # another loopback address reaches lo but not a socket bound to 127.0.0.1
        assert s.connect_ex(("127.0.0.2", mosquitto.port)) != 0
    assert _round_trip(mosquitto.port, "kit/before") == b"hello kit/before"

    mosquitto.stop()
    assert _listeners(mosquitto.port) == set()
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, mosquitto.port), timeout=1).close()

    mosquitto.start()
    assert mosquitto.proc is not None and mosquitto.proc.pid != first_pid
    assert _listeners(mosquitto.port) == {"127.0.0.1"}
    assert _round_trip(mosquitto.port, "kit/after") == b"hello kit/after"


def test_pty_pair_carries_bytes_both_ways(pty_pair: PtyPair) -> None:
    a = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
    b = os.open(pty_pair.b, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(a, b"\x01\x03\x00\x00")
        assert os.read(b, 16) == b"\x01\x03\x00\x00"
        os.write(b, b"\xff")
        assert os.read(a, 16) == b"\xff"
    finally:
        os.close(a)
        os.close(b)
