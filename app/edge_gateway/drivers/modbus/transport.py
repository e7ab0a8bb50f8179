"""Transports: one Modbus transaction at a time over a serial port or a socket.

Why hand-written and not minimalmodbus/pymodbus clients (see README.md): the RTU side needs
exact line timing (3.5-char silence, turnaround, rate limit), RS-485 direction control on a
port we own, local-echo removal, and exception replies recognised by their length instead
of waiting out a timeout. minimalmodbus keeps its timing state in module globals and waits a
full timeout on exception replies; pymodbus' serial client opens the port itself and has no
RS-485 or inter-frame silence. Modbus/TCP shares the same error model here (Timeout, CrcError,
Disconnected, DeviceException), which is what lets one line loop handle every scheme.
pymodbus serves the other side: the PLC simulator in tools/plcsim.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import termios
import time
from collections import deque
from typing import Protocol

import serial

from edge_gateway.drivers.modbus import rtu
from edge_gateway.drivers.modbus.model import Endpoint
from edge_gateway.drivers.modbus.pdu import CrcError, Disconnected, Mismatch, ModbusError, Timeout

RECV_SIZE = 4096  # one recv takes a whole answer (a Modbus/TCP ADU is at most 260 bytes)


class Transport(Protocol):
    bytes_out: int
    bytes_in: int

    def open(self) -> None: ...
    def close(self) -> None: ...
    def transact(self, unit: int, pdu: bytes) -> bytes: ...


class _Wire(Protocol):
    """Byte stream with deadlines: a serial port or a socket."""

    def write(self, data: bytes) -> None: ...
    def read(self, n: int, deadline: float) -> bytes: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


class SerialWire:
    def __init__(self, ep: Endpoint) -> None:
        try:
            self.port = serial.Serial(
                ep.host,
                baudrate=ep.baud,
                bytesize=ep.bytesize,
                parity=ep.parity,
                stopbits=ep.stopbits,
                timeout=ep.timeout,
                write_timeout=max(1.0, ep.timeout),
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError, termios.error) as e:
            raise Disconnected(f"cannot open {ep.host}: {e}") from None
        self.rts = ep.rs485 == "rts"
        if ep.rs485 == "kernel":
            from serial.rs485 import RS485Settings  # type: ignore[import-untyped]

            try:
                self.port.rs485_mode = RS485Settings(rts_level_for_tx=True, rts_level_for_rx=False)
            except (ValueError, OSError) as e:
                self.port.close()
                raise ModbusError(
                    f"{ep.host}: the driver refuses RS-485 mode (TIOCSRS485): {e}; use rs485: rts or none"
                ) from None
        if self.rts:
            self.port.rts = False

    def write(self, data: bytes) -> None:
        try:
            if self.rts:
                self.port.rts = True
            self.port.write(data)
            if self.rts:
                self.port.flush()  # tcdrain: the last stop bit has left before we release the bus
                self.port.rts = False
        except (serial.SerialException, OSError) as e:
            raise Disconnected(str(e)) from None

    def read(self, n: int, deadline: float) -> bytes:
        # select() on the fd with our own deadline: setting pyserial's timeout per read would
        # re-run tcsetattr() on every call.
        buf = b""
        fd = self.port.fileno()
        try:
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    break
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    raise Disconnected("serial port closed")
                buf += chunk
        except OSError as e:
            raise Disconnected(str(e)) from None
        return buf

    def discard(self) -> None:
        try:
            self.port.reset_input_buffer()
        except (serial.SerialException, OSError) as e:
            raise Disconnected(str(e)) from None

    def close(self) -> None:
        self.port.close()


class SocketWire:
    def __init__(self, ep: Endpoint) -> None:
        assert ep.port is not None
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=ep.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.scheme == "tls+tcp" and ep.tls is not None:
                ctx = ssl.create_default_context(cafile=ep.tls.ca)
                if ep.tls.client_cert:
                    ctx.load_cert_chain(ep.tls.client_cert, ep.tls.client_key)
                sock = ctx.wrap_socket(sock, server_hostname=ep.host)
        except (OSError, ssl.SSLError) as e:
            raise Disconnected(f"cannot connect to {ep.host}:{ep.port}: {e}") from None
        self.sock = sock
        self._rx = b""  # received, not yet read: the next answer's start, or a stray answer

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Disconnected(str(e)) from None

    def read(self, n: int, deadline: float) -> bytes:
        """n bytes, or fewer at the deadline. A recv takes whatever has arrived (up to RECV_SIZE): an
        MBAP answer comes in one segment, so its header and body cost one poll and one recv, not two."""
        buf = self._rx
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(RECV_SIZE, n - len(buf)))
            except TimeoutError:
                break
            except OSError as e:
                self._rx = b""
                raise Disconnected(str(e)) from None
            if not chunk:
                self._rx = b""
                raise Disconnected("connection closed by peer")
            buf += chunk
        self._rx = buf[n:]
        return buf[:n]

    def discard(self) -> None:
        self._rx = b""
        self.sock.settimeout(0)
        try:
            while self.sock.recv(4096):
                pass
        except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
            pass
        except OSError as e:
            raise Disconnected(str(e)) from None

    def close(self) -> None:
        self.sock.close()


class _Connected:
    """The wire's lifecycle, shared by both framings: opened lazily, closed on errors."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.wire: _Wire | None = None
        self.bytes_out = self.bytes_in = 0

    def _make_wire(self) -> _Wire:
        return SocketWire(self.ep)

    def open(self) -> None:
        if self.wire is None:
            self.wire = self._make_wire()
            self.quiet_since = time.monotonic()

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None

    def _wire(self) -> _Wire:
        self.open()
        assert self.wire is not None
        return self.wire


class RtuTransport(_Connected):
    """RTU framing over a serial line (or a serial device server for rtu+tcp), with its timing."""

    def __init__(self, ep: Endpoint) -> None:
        super().__init__(ep)
        self.gap = rtu.silent_interval(ep) + ep.turnaround
        self.char = rtu.char_time(ep)
        self.quiet_since = 0.0  # when the line last went quiet

    def _make_wire(self) -> _Wire:
        rtu.precise_sleeps()  # opened on the line thread, which sleeps out the silences
        return SerialWire(self.ep) if self.ep.is_serial else SocketWire(self.ep)

    def transact(self, unit: int, pdu: bytes) -> bytes:
        wire = self._wire()
        adu = rtu.frame(unit, pdu)
        wait = self.quiet_since + self.gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        wire.write(adu)
        self.bytes_out += len(adu)
        # The request occupies the wire for len × char time; the answer cannot start before that.
        deadline = time.monotonic() + len(adu) * self.char + self.ep.timeout
        answered = False
        try:
            if self.ep.echo:
                echo = wire.read(len(adu), deadline)
                if echo != adu:
                    raise ModbusError(f"local echo mismatch ({len(echo)} of {len(adu)} bytes)")
            head = wire.read(3, deadline)
            if len(head) < 3:
                raise Timeout(f"unit {unit}: no answer within {self.ep.timeout * 1000:.0f} ms")
            total = rtu.response_length(head)
            if total is None or total > 256:
                raise ModbusError(f"unit {unit}: unexpected bytes {head.hex()} on the line")
            rest = wire.read(total - 3, deadline + total * self.char)
            # The silence before the next request counts from the last byte seen, not from after the checks.
            self.quiet_since = time.monotonic()
            resp = head + rest
            self.bytes_in += len(resp)
            if len(resp) < total:
                raise Timeout(f"unit {unit}: answer cut after {len(resp)} of {total} bytes")
            if not rtu.check(resp):
                raise CrcError(f"unit {unit}: CRC error in {resp.hex()}")
            if resp[0] != unit:
                raise Mismatch("unit", f"answer from unit {resp[0]} to a request for unit {unit}")
            _check_function(unit, pdu, resp[1])
            answered = True
            return resp[1:-2]
        except ModbusError as e:
            if not isinstance(e, Disconnected):
                # Let the rest of a garbled or foreign answer pass, then forget it (flush the input):
                # the next request starts clean.
                time.sleep(self.gap)
                wire.discard()
            raise
        finally:
            if not answered:
                self.quiet_since = time.monotonic()


def _check_function(unit: int, pdu: bytes, fc: int) -> None:
    if fc & 0x7F != pdu[0]:
        raise Mismatch("function", f"unit {unit}: answer with function {fc} to a request with function {pdu[0]}")


class MbapTransport(_Connected):
    """Modbus/TCP (and Modbus/TCP Security over TLS): MBAP header, transaction ids.

    An answer carrying the transaction id of one of the last UNANSWERED requests that got no answer
    of their own is a late answer, and is skipped; any other foreign transaction id, unit id or
    function code is a Mismatch (the framing is still intact, so the connection stays up)."""

    UNANSWERED = 16

    def __init__(self, ep: Endpoint) -> None:
        super().__init__(ep)
        self.tid = 0
        self._answered = True
        self._unanswered: deque[int] = deque(maxlen=self.UNANSWERED)

    def transact(self, unit: int, pdu: bytes) -> bytes:
        wire = self._wire()
        if not self._answered:
            self._unanswered.append(self.tid)
        self.tid = (self.tid + 1) & 0xFFFF
        self._answered = False
        adu = struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu
        wire.write(adu)
        self.bytes_out += len(adu)
        deadline = time.monotonic() + self.ep.timeout
        while True:
            head = wire.read(7, deadline)
            if len(head) < 7:
                if head:  # half a header: the stream is out of step, start over on a new connection
                    self.close()
                raise Timeout(f"unit {unit}: no answer within {self.ep.timeout * 1000:.0f} ms")
            tid, proto, length, r_unit = struct.unpack(">HHHB", head)
            if proto != 0 or not 2 <= length <= 254:
                self.close()
                raise ModbusError(f"bad MBAP header {head.hex()}")
            body = wire.read(length - 1, deadline)
            if len(body) < length - 1:
                self.close()
                raise Timeout(f"unit {unit}: answer cut short")
            self.bytes_in += 7 + len(body)
            if tid != self.tid and tid in self._unanswered:
                self._unanswered.remove(tid)
                continue  # a late answer to a request that already timed out: skip it
            if tid != self.tid:
                raise Mismatch("transaction", f"unit {unit}: answer with transaction id {tid}, expected {self.tid}")
            self._answered = True  # whatever it says, this is the answer to this request
            if r_unit != unit:
                raise Mismatch("unit", f"answer from unit {r_unit} to a request for unit {unit}")
            _check_function(unit, pdu, body[0])
            return body


def make_transport(ep: Endpoint) -> RtuTransport | MbapTransport:
    return RtuTransport(ep) if ep.rtu_framing else MbapTransport(ep)
