"""Answers that are not to our request — another unit id, function code or MBAP transaction id — are
rejected with a clear quality, counted, and do not disturb the next poll on the same line. The slaves
here are hand-written (a real pty pair for RTU, a real socket for Modbus/TCP): the simulator answers
correctly by construction."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from edge_gateway.core.frame import frames_of
from edge_gateway.drivers.modbus import pdu, rtu
from edge_gateway.drivers.modbus.line import start_line
from edge_gateway.metrics import value
from edge_gateway.testkit import LOOPBACK

from .conftest import collect, driver, serial_endpoint, tcp_endpoint, var


def _answer(unit: int, req_pdu: bytes) -> bytes:
    """A correct read-holding answer: every register holds unit * 10 + its address."""
    fc, addr, count = struct.unpack(">BHH", req_pdu[:5])
    regs = [unit * 10 + addr + i for i in range(count)]
    return struct.pack(f">BB{count}H", fc, 2 * count, *regs)


class RtuSlave(threading.Thread):
    """Answers read requests on one pty: `answer(unit, pdu) -> bytes on the wire`."""

    def __init__(self, path: str, answer: Callable[[int, bytes], bytes]) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.answer = answer
        self.stop_r, self.stop_w = os.pipe()

    def run(self) -> None:
        buf = b""
        while True:
            ready = select.select([self.fd, self.stop_r], [], [])[0]
            if self.stop_r in ready:
                return
            buf += os.read(self.fd, 256)
            while len(buf) >= 8:  # every request the line sends here is an 8-byte read
                req, buf = buf[:8], buf[8:]
                assert rtu.check(req), req.hex()
                os.write(self.fd, self.answer(req[0], req[1:-2]))

    def stop(self) -> None:
        os.write(self.stop_w, b"x")
        self.join(5)
        for fd in (self.fd, self.stop_r, self.stop_w):
            os.close(fd)


class MbapSlave(threading.Thread):
    """A Modbus/TCP server on 127.0.0.1: `answer(tid, unit, pdu) -> the ADU to send back`."""

    def __init__(self, answer: Callable[[int, int, bytes], bytes]) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.conns: list[socket.socket] = []

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return  # closed by stop()
        self.conns.append(conn)
        f = conn.makefile("rb")
        try:
            while head := f.read(7):
                tid, _, length, unit = struct.unpack(">HHHB", head)
                conn.sendall(self.answer(tid, unit, f.read(length - 1)))
        except OSError:
            return

    def stop(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()
        self.join(5)


def gather(bus, tags: dict[str, int], timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    """Every frame until each tag has its count of frames (or the deadline passed)."""
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(sum(f.tag == t for f in out) < n for t, n in tags.items()):
        out += frames_of(bus.drain(10000, 0.05))
    return out


def mbap(tid: int, unit: int, body: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


@pytest.fixture
def counters() -> Callable[[str, str], float]:
    def read(driver_id: str, field: str) -> float:
        return value("modbus_mismatch_total", {"driver_id": driver_id, "field": field})

    return read


def test_rtu_answer_from_another_unit_is_rejected_and_the_line_resynchronises(bus, pty_pair, counters) -> None:
    def answer(unit: int, req: bytes) -> bytes:
        if unit == 2:  # unit 5 answers instead of unit 2, and a torn tail of another answer follows
            return rtu.frame(5, _answer(5, req)) + b"\x05\x03\x04\x00"
        if unit == 3:  # unit 3 answers a read-holding with a read-input PDU
            return rtu.frame(3, b"\x04" + _answer(3, req)[1:])
        return rtu.frame(unit, _answer(unit, req))

    slave = RtuSlave(pty_pair.b, answer)
    slave.start()
    drivers = [driver("good", 1, "rs485", polling=0.1), driver("liar", 2, "rs485", polling=0.1, retry=1)]
    drivers.append(driver("wrongfc", 3, "rs485", polling=0.1, retry=0))
    variables = [var(f"{d.id}.v", d.id, "holding", 4, "uint16") for d in drivers]
    before = {
        "unit": counters("liar", "unit"),
        "function": counters("wrongfc", "function"),
        "pdu": value("modbus_pdu_total", {"driver_id": "liar", "func": "read_holding", "result": "mismatch"}),
    }
    line = start_line(serial_endpoint(pty_pair.a, baud=115200, timeout=0.5), drivers, variables, bus)
    try:
        frames = gather(bus, {"good.v": 30, "liar.v": 2, "wrongfc.v": 2})
        status = line.status()
    finally:
        line.stop()
        slave.stop()
    good = [f for f in frames if f.tag == "good.v"]
    assert len(good) >= 30 and all(f.q == "good" and f.value == 14 for f in good), {f.q for f in good}
    liar = [f for f in frames if f.tag == "liar.v"]
    assert liar and all(f.q == "bad:wrong_unit" and f.value is None for f in liar)
    wrongfc = [f for f in frames if f.tag == "wrongfc.v"]
    assert wrongfc and all(f.q == "bad:wrong_function" for f in wrongfc)
    assert status["liar"]["last_error"] == "answer from unit 5 to a request for unit 2"
    assert "answer with function 4 to a request with function 3" in status["wrongfc"]["last_error"]
    # retry=1: two rejected answers in the first poll, then one a probe once the unit is in Fault
    assert counters("liar", "unit") - before["unit"] >= len(liar) + 1
    assert counters("wrongfc", "function") - before["function"] >= len(wrongfc)
    assert (
        value("modbus_pdu_total", {"driver_id": "liar", "func": "read_holding", "result": "mismatch"}) - before["pdu"]
        == counters("liar", "unit") - before["unit"]
    )


def test_tcp_answers_with_another_unit_or_transaction_id_are_rejected(bus, counters) -> None:
    def answer(tid: int, unit: int, req: bytes) -> bytes:
        if unit == 2:
            return mbap(tid, 9, _answer(9, req))  # a gateway behind the server mixes up its slaves
        if unit == 3:
            return mbap(tid ^ 0x5A5A, 3, _answer(3, req))  # a transaction id that was never sent
        return mbap(tid, unit, _answer(unit, req))

    slave = MbapSlave(answer)
    slave.start()
    drivers = [
        driver("tgood", 1, "plc", polling=0.1),
        driver("tunit", 2, "plc", polling=0.1, retry=0),
        driver("ttid", 3, "plc", polling=0.1, retry=0),
    ]
    variables = [var(f"{d.id}.v", d.id, "holding", 0, "uint16") for d in drivers]
    before = {d: counters(d, f) for d, f in (("tunit", "unit"), ("ttid", "transaction"))}
    line = start_line(tcp_endpoint(slave.port, timeout=2.0), drivers, variables, bus)
    try:
        frames = gather(bus, {"tgood.v": 20, "tunit.v": 2, "ttid.v": 2})
        status = line.status()
    finally:
        line.stop()
        slave.stop()
    by = {d.id: [f for f in frames if f.tag == f"{d.id}.v"] for d in drivers}
    assert len(by["tgood"]) >= 20 and all(f.q == "good" and f.value == 10 for f in by["tgood"])
    assert by["tunit"] and all(f.q == "bad:wrong_unit" for f in by["tunit"])
    assert by["ttid"] and all(f.q == "bad:wrong_transaction" for f in by["ttid"])  # at once, not a timeout
    assert status["tunit"]["last_error"] == "answer from unit 9 to a request for unit 2"
    assert "transaction id" in status["ttid"]["last_error"]
    assert counters("tunit", "unit") - before["tunit"] >= len(by["tunit"])
    assert counters("ttid", "transaction") - before["ttid"] >= len(by["ttid"])


def test_a_late_answer_to_a_timed_out_request_is_skipped_not_a_mismatch(bus, counters) -> None:
    """The first request gets no answer in time; its answer arrives just before the second one's."""
    held: list[bytes] = []

    def answer(tid: int, unit: int, req: bytes) -> bytes:
        if tid == 1:
            held.append(mbap(tid, unit, _answer(unit, req)))
            return b""
        late, held[:] = b"".join(held), []
        return late + mbap(tid, unit, _answer(unit, req))

    slave = MbapSlave(answer)
    slave.start()
    before = counters("late", "transaction")
    line = start_line(
        tcp_endpoint(slave.port, timeout=0.3),
        [driver("late", 1, "plc", polling=0.1, retry=0)],
        [var("late.v", "late", "holding", 0, "uint16")],
        bus,
    )
    try:
        frames = collect(bus, 3)
    finally:
        line.stop()
        slave.stop()
    assert [f.q for f in frames] == ["bad:timeout", "good", "good"]
    assert counters("late", "transaction") == before


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"\x03\x02\x00\x01", "response byte count is 2, expected 4 for 2 registers"),
        (b"\x03\x04\x00\x01\x00", "response carries 3 data bytes after a byte count of 4"),
        (b"\x03", "response to a read of 2 registers ends after the function code"),
    ],
)
def test_short_or_inconsistent_answers_say_what_they_got(response: bytes, message: str) -> None:
    with pytest.raises(pdu.ModbusError, match=f"^{message}$"):
        pdu.parse(pdu.read_request(3, 0, 2), response)


def test_answer_with_another_function_code_is_a_mismatch() -> None:
    with pytest.raises(pdu.Mismatch, match="answer with function 4 to a request with function 3") as e:
        pdu.parse(pdu.read_request(3, 0, 1), b"\x04\x02\x00\x01")
    assert e.value.reason == "wrong_function"
