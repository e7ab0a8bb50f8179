"""Modbus RTU framing and wire timing (CRC-16/MODBUS, character time, 3.5-char silence).

RTU has no length field and no frame delimiter: a frame ends when the line is silent for
3.5 character times. So timing is part of the protocol, and the line thread enforces it
itself (pyserial and the kernel do not): a request may start only after the line has been
quiet for the silent interval plus the configured turnaround.
"""

from __future__ import annotations

import sys

from edge_gateway.drivers.modbus.model import Endpoint

PR_SET_TIMERSLACK = 29  # <linux/prctl.h>
TIMER_SLACK_NS = 1000


def _table() -> list[int]:
    out = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        out.append(crc)
    return out


_CRC = _table()


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC[(crc ^ b) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def check(adu: bytes) -> bool:
    return len(adu) >= 4 and crc16(adu[:-2]) == int.from_bytes(adu[-2:], "little")


def bits_per_char(ep: Endpoint) -> int:
    """Start bit + data bits + parity bit + stop bits."""
    return 1 + ep.bytesize + (0 if ep.parity == "N" else 1) + ep.stopbits


def char_time(ep: Endpoint) -> float:
    return bits_per_char(ep) / ep.baud


def silent_interval(ep: Endpoint) -> float:
    """3.5 character times; fixed at 1.75 ms above 19200 baud (Modbus over serial line, §2.5.1.1)."""
    return 0.00175 if ep.baud > 19200 else 3.5 * char_time(ep)


def response_length(pdu_head: bytes) -> int | None:
    """Total RTU frame length once the first 3 bytes (unit, function, byte count/addr hi) are known."""
    fc = pdu_head[1]
    if fc & 0x80:
        return 5  # unit, fc|0x80, exception code, crc
    if fc in (1, 2, 3, 4):
        return 3 + pdu_head[2] + 2
    if fc in (5, 6, 15, 16):
        return 8
    if fc == 0x16:
        return 10
    return None


def precise_sleeps() -> bool:
    """Ask Linux for 1 µs timer slack on the calling thread (the line thread owning an RTU wire).

    The default slack (50 µs) lets every sleep overshoot by that much; the sleep for the silent interval
    before each request is on the wire's critical path, so at 115 200 baud (a 1.75 ms silence, ~9 ms per
    poll) the default alone costs about 0.6 % of the line. Returns False where the call is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only RTU lines need it

    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
