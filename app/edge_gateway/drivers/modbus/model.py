"""The Modbus parts of the snapshot as frozen dataclasses: endpoints (serial, tcp, tls+tcp, rtu+tcp),
`proto: modbus` drivers (units) and register-addressed variables. Built by drivers/modbus/config.py,
held by the generic Snapshot (config/model.py) in its `plugin_endpoints`, `plugin_devices` and
`plugin_tags` tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from edge_gateway.config.model import TlsFiles
from edge_gateway.core.datatypes import SIZE_WORDS, Datatype

if TYPE_CHECKING:
    from edge_gateway.config.expr import Scale

Scheme = Literal["tcp", "tls+tcp", "rtu+tcp", "serial"]
RegType = Literal["holding", "input", "coil", "discrete"]
Access = Literal["R", "W", "RW"]
Order = Literal["big", "little"]
# Registers a datatype occupies; None = `len` must be given (string/binary: registers of 2 bytes).
SCHEMES = ("tcp", "tls+tcp", "rtu+tcp", "serial")  # endpoints.yml schemes of a Modbus line
DATATYPE_REGS = SIZE_WORDS
BIT_TYPES = ("coil", "discrete")  # one bit per address, datatype bool only
WORD_TYPES = ("holding", "input")  # 16-bit registers
WRITABLE_TYPES = ("holding", "coil")  # the only tables Modbus can write


@dataclass(frozen=True)
class Endpoint:
    """One physical connection, owned by exactly one line thread."""

    id: str
    scheme: Scheme
    host: str  # IP/hostname, or the serial device path for `serial`
    port: int | None = None  # None for `serial`
    timeout: float = 1.0  # response timeout, seconds
    rate: float | None = None  # max requests per second on this line; None = unlimited
    # serial line settings (scheme `serial`; baud also sizes RTU timing for `rtu+tcp`)
    baud: int = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: int = 1
    bytesize: int = 8
    halfduplex: bool = True
    rs485: Literal["none", "kernel", "rts"] = "none"
    echo: bool = False
    turnaround: float = 0.0  # extra quiet time before the next request, seconds
    tls: TlsFiles | None = None  # `tls+tcp` only
    src: str = field(default="", compare=False)

    @property
    def is_serial(self) -> bool:
        return self.scheme == "serial"

    @property
    def rtu_framing(self) -> bool:
        """RTU frames (CRC, silent intervals) rather than the MBAP header of Modbus/TCP."""
        return self.scheme in ("serial", "rtu+tcp")


@dataclass(frozen=True)
class ModbusCfg:
    unit_id: int
    polling: float  # seconds between polls of this unit
    max_regs_per_req: int = 120
    retry: int = 3
    endian: Order = "big"  # byte order inside a register
    word_order: Order = "big"  # register order of 32/64-bit values
    enable_write: bool = False


@dataclass(frozen=True)
class Driver:
    """One device (unit) on an endpoint. Several drivers may share one serial endpoint."""

    id: str
    kind: Literal["static"]
    endpoint_id: str
    proto: Literal["modbus"]
    modbus: ModbusCfg
    src: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)  # one per tag: no __dict__
class Address:
    type: RegType
    addr: int  # 0-based PDU address
    len: int  # registers (word types) or bits (bit types)

    @property
    def end(self) -> int:
        """One past the last address used."""
        return self.addr + self.len


@dataclass(frozen=True, slots=True)  # one per tag: no __dict__
class Variable:
    tag: str
    driver_id: str
    access: Access
    address: Address
    datatype: Datatype
    endian: Order  # resolved: the variable's override or its driver's
    word_order: Order
    scale: Scale | None = None  # compiled once at load; compares by its source text
    unit: str | None = None
    src: str = field(default="", compare=False)

    @property
    def readable(self) -> bool:
        return "R" in self.access

    @property
    def writable(self) -> bool:
        return "W" in self.access
