"""The test kit itself: the broker and the pty pair are real and carry bytes."""

from __future__ import annotations

import os
import socket

from edge_gateway.testkit import Mosquitto, PtyPair


def test_mosquitto_listens_on_loopback_and_restarts(mosquitto: Mosquitto) -> None:
    socket.create_connection(("127.0.0.1", mosquitto.port), timeout=1).close()
    mosquitto.stop()
    mosquitto.start()
    socket.create_connection(("127.0.0.1", mosquitto.port), timeout=1).close()


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
