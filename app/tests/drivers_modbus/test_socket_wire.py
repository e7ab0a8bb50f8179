"""SocketWire reads what has arrived in one recv and hands it out in the sizes asked for."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from edge_gateway.drivers.modbus.model import Endpoint
from edge_gateway.drivers.modbus.pdu import Timeout
from edge_gateway.drivers.modbus.transport import MbapTransport, SocketWire


def _server(answers: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A Modbus/TCP peer on 127.0.0.1 that, for each request, sends the next canned bytes in one send."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            for a in answers:
                if not conn.recv(260):
                    return
                conn.sendall(a)
            conn.recv(260)  # until the client closes

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _answer(tid: int, unit: int, regs: list[int]) -> bytes:
    pdu = struct.pack(">BB", 3, 2 * len(regs)) + struct.pack(f">{len(regs)}H", *regs)
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def test_reads_split_one_segment_and_discard_forgets_the_rest() -> None:
    srv, t = _server([b"0123456789"])
    try:
        wire = SocketWire(Endpoint("w", "tcp", "127.0.0.1", srv.getsockname()[1], timeout=1.0))
        wire.write(b"?")
        deadline = time.monotonic() + 1.0
        assert wire.read(3, deadline) == b"012"
        assert wire.read(4, deadline) == b"3456"
        wire.discard()
        assert wire.read(3, time.monotonic() + 0.05) == b""  # nothing new arrived: the rest is gone
        wire.close()
    finally:
        srv.close()
        t.join(2)


def test_a_late_answer_in_the_same_segment_as_the_current_one_is_skipped() -> None:
    """The answer to a timed-out request and the answer to this one arrive together: the first is
    recognised by its transaction id and skipped, the second returned, nothing carried over."""
    request = struct.pack(">BHH", 3, 0, 2)
    srv, t = _server([b"", _answer(1, 1, [7, 8]) + _answer(2, 1, [9, 10]), _answer(3, 1, [11, 12])])
    try:
        mbap = MbapTransport(Endpoint("w", "tcp", "127.0.0.1", srv.getsockname()[1], timeout=0.3))
        with pytest.raises(Timeout, match="no answer"):  # the server stays silent on the first request
            mbap.transact(1, request)
        assert mbap.transact(1, request) == struct.pack(">BB4s", 3, 4, struct.pack(">2H", 9, 10))
        assert mbap.transact(1, request) == struct.pack(">BB4s", 3, 4, struct.pack(">2H", 11, 12))
        mbap.close()
    finally:
        srv.close()
        t.join(2)
