"""Modbus PDUs: build requests and parse responses for the function codes the gateway uses.

Reads 0x01 0x02 0x03 0x04, writes 0x05 0x06 0x0F 0x10, mask write 0x16. The same PDU goes
into an RTU frame (unit + PDU + CRC) or a Modbus/TCP ADU (MBAP header + PDU).
"""

from __future__ import annotations

import struct

TABLE_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
FC_NAME = {
    1: "read_coils",
    2: "read_discrete",
    3: "read_holding",
    4: "read_input",
    5: "write_coil",
    6: "write_register",
    15: "write_coils",
    16: "write_registers",
    0x16: "mask_write",
}
MAX_REGS = 125
MAX_BITS = 2000


class ModbusError(Exception):
    """A failed transaction. `reason` becomes the frame quality `bad:<reason>`."""

    reason = "protocol"


class Timeout(ModbusError):
    reason = "timeout"


class CrcError(ModbusError):
    reason = "crc"


class Disconnected(ModbusError):
    reason = "disconnected"


class Mismatch(ModbusError):
    """An answer that is not to our request: from another unit id, with another function code, or
    (Modbus/TCP) with another transaction id. Quality `bad:wrong_unit`, `bad:wrong_function`,
    `bad:wrong_transaction`; counted as `modbus_pdu_total{result="mismatch"}` and `modbus_mismatch_total`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # unit | function | transaction
        self.reason = f"wrong_{field}"


class DeviceException(ModbusError):
    def __init__(self, fc: int, code: int) -> None:
        super().__init__(f"device answered exception {code} to function {fc}")
        self.code = code
        self.reason = f"exception_{code}"


def read_request(fc: int, addr: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, addr, count)


def write_coil(addr: int, on: bool) -> bytes:
    return struct.pack(">BHH", 5, addr, 0xFF00 if on else 0)


def write_register(addr: int, value: int) -> bytes:
    return struct.pack(">BHH", 6, addr, value)


def write_registers(addr: int, values: list[int]) -> bytes:
    return struct.pack(f">BHHB{len(values)}H", 16, addr, len(values), 2 * len(values), *values)


def write_coils(addr: int, bits: list[bool]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            packed[i // 8] |= 1 << (i % 8)
    return struct.pack(">BHHB", 15, addr, len(bits), len(packed)) + bytes(packed)


def mask_write(addr: int, and_mask: int, or_mask: int) -> bytes:
    return struct.pack(">BHHH", 0x16, addr, and_mask, or_mask)


def parse(request: bytes, response: bytes) -> list[int] | list[bool] | None:
    """Check a response PDU against its request; return registers or bits for reads."""
    data = parse_raw(request, response)
    if isinstance(data, bytes):
        return list(struct.unpack(f">{len(data) // 2}H", data))
    return data


def parse_raw(request: bytes, response: bytes) -> bytes | list[bool] | None:
    """Check a response PDU against its request; return a register read's data bytes as they came
    (big-endian registers, for codec.BlockDecoder), the bits of a coil/discrete read, None for writes."""
    fc = request[0]
    if not response:
        raise ModbusError("empty response")
    if response[0] == fc | 0x80:
        raise DeviceException(fc, response[1] if len(response) > 1 else 0)
    if response[0] != fc:
        raise Mismatch("function", f"answer with function {response[0]} to a request with function {fc}")
    if fc in (1, 2, 3, 4):
        _, count = struct.unpack_from(">HH", request, 1)
        want = 2 * count if fc in (3, 4) else (count + 7) // 8
        what = f"{count} {'registers' if fc in (3, 4) else 'bits'}"
        if len(response) < 2:
            raise ModbusError(f"response to a read of {what} ends after the function code")
        nbytes, carried = response[1], len(response) - 2
        if nbytes != want:
            raise ModbusError(f"response byte count is {nbytes}, expected {want} for {what}")
        if carried != want:
            raise ModbusError(f"response carries {carried} data bytes after a byte count of {want}")
        data = response[2:]
        if fc in (3, 4):
            return data
        return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]
    if response[:5] != request[:5]:
        raise ModbusError("write response does not echo the request")
    return None
