"""`edge-cfg modbus scan`: find the Modbus units on a line and write a starting configuration.

    edge-cfg modbus scan --serial /dev/ttyS1 --baud 9600 [--parity E --stopbits 1] --units 1-247
    edge-cfg modbus scan --tcp 192.168.10.5:502 --units 1-10 --probe holding:0-99,input:0-9 --out DIR

A commissioning tool, not part of the runtime. Serial lines are read with minimalmodbus (pinned and
shipped for this): one `Instrument` on a `serial.Serial` this module opens itself with
`exclusive=True`. minimalmodbus has no Modbus/TCP, so `--tcp` uses pymodbus' sync `ModbusTcpClient`.

A unit is present when it answers the presence read (holding register 0): with data, or with any
Modbus exception (an exception is an answer) except 0x0A/0x0B, which a TCP-to-RTU gateway sends for
a unit behind it that did not answer. Each present unit is then probed on the `--probe` ranges; a
range the unit rejects with exception 0x02 (or 0x03) is halved until the readable runs are found.

A serial line the gateway owns is never touched: before opening, the scan refuses when another
process has the device open (/proc/*/fd, the pty allocator excepted), when a running `edge-gateway`
has the device in its endpoints.yml, or when the exclusive lock (flock, which pyserial takes with
`exclusive=True`, as the runtime's transport does) is held.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from edge_gateway.config.units import parse_duration

TABLES = ("holding", "input", "coil", "discrete")
FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MAX_COUNT = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}
ABSENT_BEHIND_GATEWAY = (0x0A, 0x0B)  # gateway path unavailable / target device failed to respond
SPLIT_CODES = (0x02, 0x03)  # illegal data address / value: some address in the range is not there

EXIT_FOUND, EXIT_NONE, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2, 3


class NoAnswer(Exception):
    """Nothing came back within the timeout."""


class Garbled(Exception):
    """Something came back that is not a valid answer (CRC, length, wrong unit)."""


class DeviceException(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"exception 0x{code:02X}")
        self.code = code


class ScanError(Exception):
    """The line cannot be scanned (cannot open, cannot connect, bad arguments)."""


class Refused(ScanError):
    """The line belongs to someone else (a running gateway)."""


@dataclass(frozen=True)
class Probe:
    table: str
    start: int
    count: int


def parse_units(text: str) -> list[int]:
    """`1-5,9,20-22` → [1, 2, 3, 4, 5, 9, 20, 21, 22]; unit ids 1..247."""
    units: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"not a unit range: {part!r} (expected e.g. 1-247 or 1,5,10-12)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= lo <= hi <= 247:
            raise ValueError(f"unit range {part!r} is outside 1-247 (or reversed)")
        units.update(range(lo, hi + 1))
    return sorted(units)


def parse_probes(text: str) -> list[Probe]:
    """`holding:0-99,input:0-9,coil:0` → probes; addresses are 0-based PDU addresses."""
    probes: list[Probe] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([a-z]+):(\d+)(?:-(\d+))?", part)
        if not m or m.group(1) not in TABLES:
            raise ValueError(f"not a probe range: {part!r} (expected TABLE:FROM-TO, TABLE one of {', '.join(TABLES)})")
        lo, hi = int(m.group(2)), int(m.group(3) or m.group(2))
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"probe range {part!r} is outside 0-65535 (or reversed)")
        probes.append(Probe(m.group(1), lo, hi - lo + 1))
    return _merged(probes)


def _merged(probes: list[Probe]) -> list[Probe]:
    """Overlapping or adjacent ranges of one table become one (no address is read, or configured, twice)."""
    out: list[Probe] = []
    for table in dict.fromkeys(p.table for p in probes):
        spans = sorted((p.start, p.start + p.count - 1) for p in probes if p.table == table)
        lo, hi = spans[0]
        for a, b in spans[1:]:
            if a <= hi + 1:
                hi = max(hi, b)
            else:
                out.append(Probe(table, lo, hi - lo + 1))
                lo, hi = a, b
        out.append(Probe(table, lo, hi - lo + 1))
    return out


# --- readers: one transaction at a time ---------------------------------------------------


class Reader(Protocol):
    def read(self, unit: int, table: str, start: int, count: int) -> list[int]:
        """Values (bits as 0/1); raises NoAnswer, Garbled or DeviceException."""
        ...

    def close(self) -> None: ...


def _minimalmodbus_code(e: Exception) -> int:
    """minimalmodbus raises one class for several codes; its message names the code."""
    text = str(e)
    m = re.search(r"error code (\d+)", text)
    if m:
        return int(m.group(1))
    for code, words in (
        (1, "illegal function"),
        (2, "illegal data address"),
        (3, "illegal data value"),
        (4, "device failure"),
        (6, "device busy"),
        (7, "negative acknowledge"),
        (8, "memory parity"),
        (10, "gateway path"),
        (11, "gateway target"),
    ):
        if words in text:
            return code
    return 4


class SerialReader:
    """minimalmodbus on a port opened here with exclusive=True (flock), like the runtime opens it."""

    def __init__(self, port: str, baud: int, parity: str, stopbits: int, bytesize: int, timeout: float) -> None:
        import termios

        import minimalmodbus
        import serial

        try:
            self.serial = serial.Serial(
                port,
                baudrate=baud,
                parity=parity,
                stopbits=stopbits,
                bytesize=bytesize,
                timeout=timeout,
                write_timeout=max(1.0, timeout),
                exclusive=True,
            )
        except serial.SerialException as e:
            if "exclusively lock" in str(e):
                raise Refused(
                    f"{port}: another process holds the exclusive lock on this port (the gateway opens its "
                    "lines with exclusive=True): stop it before scanning"
                ) from None
            raise ScanError(f"cannot open {port}: {e}") from None
        except (OSError, ValueError, termios.error) as e:
            raise ScanError(f"cannot open {port}: {e}") from None
        self.timeout = timeout
        self.char = (1 + bytesize + (parity != "N") + stopbits) / baud  # seconds per character on the wire
        self.mm = minimalmodbus
        self.instrument = minimalmodbus.Instrument(self.serial, 1, mode=minimalmodbus.MODE_RTU)
        self.instrument.clear_buffers_before_each_transaction = True

    def read(self, unit: int, table: str, start: int, count: int) -> list[int]:
        mm, ins = self.mm, self.instrument
        ins.address = unit
        # The answer's own wire time on top of the timeout: 125 registers take 290 ms at 9600 baud.
        # minimalmodbus reads the whole answer in one serial.read(), whose deadline POSIX pyserial
        # takes from `_timeout`; the `timeout` property would re-run tcsetattr() on every change
        # (which a pty with parity set rejects with EINVAL).
        answer = 5 + (2 * count if table in ("holding", "input") else (count + 7) // 8)
        self.serial._timeout = self.timeout + (8 + answer + 3.5) * self.char
        try:
            if table in ("holding", "input"):
                return list(ins.read_registers(start, count, functioncode=FUNCTION[table]))
            return [int(b) for b in ins.read_bits(start, count, functioncode=FUNCTION[table])]
        except mm.NoResponseError:
            raise NoAnswer(f"unit {unit}: no answer") from None
        except mm.SlaveReportedException as e:
            raise DeviceException(_minimalmodbus_code(e)) from None
        except (mm.ModbusException, ValueError) as e:
            raise Garbled(f"unit {unit}: {e}") from None

    def close(self) -> None:
        self.serial.close()


class TcpReader:
    """pymodbus' sync ModbusTcpClient (minimalmodbus speaks RTU/ASCII only), no retries."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        from pymodbus.client import ModbusTcpClient

        # Its "No response received" warnings would interleave with our report: a silent unit is a result.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self.where = f"{host}:{port}"
        self.client = ModbusTcpClient(host, port=port, timeout=timeout, retries=0)
        if not self.client.connect():
            raise ScanError(f"cannot connect to {self.where}")

    def read(self, unit: int, table: str, start: int, count: int) -> list[int]:
        from pymodbus.exceptions import ModbusException

        c = self.client
        if not c.connected and not c.connect():
            raise ScanError(f"lost the connection to {self.where} and cannot reconnect")
        fn = {
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
            "coil": c.read_coils,
            "discrete": c.read_discrete_inputs,
        }[table]
        try:
            rr = fn(start, count=count, device_id=unit)
        except ModbusException as e:
            raise NoAnswer(f"unit {unit}: {e}") from None
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            if code is None:
                raise Garbled(f"unit {unit}: {rr}")
            raise DeviceException(int(code))
        if table in ("holding", "input"):
            return list(rr.registers)[:count]
        return [int(b) for b in rr.bits[:count]]

    def close(self) -> None:
        self.client.close()


# --- scanning -------------------------------------------------------------------------------


@dataclass
class Block:
    """A run of addresses that read back, with the values seen."""

    table: str
    start: int
    values: list[int]


@dataclass
class UnitReport:
    unit: int
    answer: str  # how it answered the presence read: "data" or "exception 0x02"
    blocks: list[Block] = field(default_factory=list)
    skipped: list[tuple[str, int, int, str]] = field(default_factory=list)  # table, first, last, why
    notes: list[str] = field(default_factory=list)

    def skip(self, table: str, start: int, count: int, why: str) -> None:
        """A range that did not read back; adjacent ranges with the same reason are merged."""
        if self.skipped:
            t, lo, hi, w = self.skipped[-1]
            if (t, w) == (table, why) and hi + 1 == start:
                self.skipped[-1] = (t, lo, start + count - 1, w)
                return
        self.skipped.append((table, start, start + count - 1, why))

    def all_notes(self) -> list[str]:
        return self.notes + [
            f"{t}:{lo}-{hi}: {why}" if hi > lo else f"{t}:{lo}: {why}" for t, lo, hi, why in self.skipped
        ]


@dataclass
class ScanResult:
    units: list[UnitReport]
    scanned: int
    garbled: list[str]


def presence(reader: Reader, unit: int) -> str | None:
    """How the unit answers a read of holding register 0, or None when nothing is there."""
    for attempt in range(2):
        try:
            reader.read(unit, "holding", 0, 1)
            return "data"
        except DeviceException as e:
            return None if e.code in ABSENT_BEHIND_GATEWAY else str(e)
        except NoAnswer:
            return None
        except Garbled:
            if attempt:
                raise
    return None


def probe_unit(reader: Reader, report: UnitReport, probes: Iterable[Probe]) -> None:
    """Fill `report.blocks`: every probe range, in legal chunks, halved where the unit rejects an address."""
    unsupported: set[str] = set()

    def walk(table: str, start: int, count: int) -> None:
        if table in unsupported:
            return
        try:
            values = reader.read(report.unit, table, start, count)
        except DeviceException as e:
            if e.code == 0x01:
                unsupported.add(table)
                report.notes.append(f"{table}: illegal function (0x01): the unit has no {table} table")
            elif e.code in SPLIT_CODES and count > 1:
                half = count // 2
                walk(table, start, half)
                walk(table, start + half, count - half)
            else:
                report.skip(table, start, count, str(e))
            return
        except (NoAnswer, Garbled) as e:
            report.skip(table, start, count, str(e).removeprefix(f"unit {report.unit}: "))
            return
        if report.blocks and report.blocks[-1].table == table:
            last = report.blocks[-1]
            if last.start + len(last.values) == start:
                last.values.extend(values)
                return
        report.blocks.append(Block(table, start, values))

    for p in probes:
        step = MAX_COUNT[p.table]
        for start in range(p.start, p.start + p.count, step):
            walk(p.table, start, min(step, p.start + p.count - start))


def scan(
    reader: Reader,
    units: list[int],
    probes: list[Probe],
    progress: Callable[[int, int, int, int], None] | None = None,
) -> ScanResult:
    found: list[UnitReport] = []
    garbled: list[str] = []
    for i, unit in enumerate(units, 1):
        if progress:
            progress(i, len(units), unit, len(found))
        try:
            answer = presence(reader, unit)
        except Garbled as e:
            garbled.append(str(e))
            continue
        if answer is None:
            continue
        report = UnitReport(unit, answer)
        probe_unit(reader, report, probes)
        found.append(report)
    return ScanResult(found, len(units), garbled)


# --- who owns the line ----------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    pid: int
    cmdline: str
    why: str


def _cmdline(pid: str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pty_allocator(pid: str, pts_index: int) -> bool:
    """True when the process holds the master side of /dev/pts/N (socat, a terminal): it is the wire."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^tty-index:\s*(\d+)", info, re.M)
        if m and int(m.group(1)) == pts_index:
            return True
    return False


def open_by_others(device: str) -> list[Holder]:
    """Processes other than this one with the device open (as far as /proc lets us see)."""
    real = os.path.realpath(device)
    pts = re.fullmatch(r"/dev/pts/(\d+)", real)
    me = str(os.getpid())
    holders: list[Holder] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target == real:
                if pts and _pty_allocator(pid, int(pts.group(1))):
                    break
                holders.append(Holder(int(pid), " ".join(_cmdline(pid)), f"has {real} open"))
                break
    return holders


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def gateways_configured_for(device: str) -> list[Holder]:
    """Running `edge-gateway run --config DIR` processes whose endpoints.yml has this serial device."""
    real = os.path.realpath(device)
    holders: list[Holder] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == str(os.getpid()):
            continue
        argv = _cmdline(pid)
        if "run" not in argv or not any("edge-gateway" in a or "edge_gateway.runtime" in a for a in argv):
            continue
        cfg = _config_arg(argv)
        if cfg is None:
            continue
        try:
            # An absolute --config (the systemd unit's) needs no access to another user's cwd.
            cfg_dir = Path(cfg if os.path.isabs(cfg) else os.path.join(os.readlink(f"/proc/{pid}/cwd"), cfg))
            table = yaml.safe_load((cfg_dir / "endpoints.yml").read_text()) or {}
        except (OSError, ValueError, RecursionError, yaml.YAMLError):
            continue  # unreadable, not UTF-8, too deep, not YAML: another gateway's broken config owns nothing
        if not isinstance(table, dict):
            continue
        for ident, ep in table.items():
            if not isinstance(ep, dict) or ep.get("scheme") != "serial" or not isinstance(ep.get("host"), str):
                continue
            if os.path.realpath(cfg_dir / ep["host"]) == real:
                why = f"is an edge-gateway with {real} configured as endpoint {ident} in {cfg_dir}/endpoints.yml"
                holders.append(Holder(int(pid), " ".join(argv), why))
    return holders


def check_line_free(device: str) -> None:
    """Raise Refused when a running gateway (or anything else) owns the serial line."""
    gateways = gateways_configured_for(device)
    holders = gateways + open_by_others(device)
    seen: set[int] = set()
    lines = []
    for h in holders:
        if h.pid not in seen:
            seen.add(h.pid)
            cmd = " ".join(h.cmdline.split())
            lines.append(f"  pid {h.pid} {h.why}: {cmd[:200]}")
    if lines:
        hint = (
            "stop the gateway (e.g. `systemctl stop edge-gateway`) or remove the endpoint and reload"
            if gateways or any("edge-gateway" in h.cmdline or "edge_gateway" in h.cmdline for h in holders)
            else "close the program that has it open"
        )
        raise Refused(f"{device} is in use; not scanning a line another process owns ({hint}):\n" + "\n".join(lines))


# --- the starting configuration ---------------------------------------------------------------


def _ident(text: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_")
    return ident or "line"


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


@dataclass
class Target:
    serial: str | None = None
    host: str | None = None
    port: int = 502
    baud: int = 19200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def endpoint_id(self) -> str:
        if self.serial:
            return _ident(os.path.basename(self.serial))
        return _ident(f"plc_{self.host}_{self.port}")

    def describe(self) -> str:
        if self.serial:
            return f"{self.serial} {self.baud} {self.bytesize}{self.parity}{self.stopbits}"
        return f"tcp {self.host}:{self.port}"


def render(target: Target, result: ScanResult, stamp: str) -> dict[str, str]:
    """endpoints.yml, drivers.yml, variables.yml as text, commented with what was seen."""
    ep = target.endpoint_id
    head = f"# written by `edge-cfg modbus scan` ({target.describe()}, {stamp}): a starting point, edit it.\n"
    e = [head.replace("# written", "# endpoints.yml — written")]
    if target.serial:
        e += [
            f"{ep}:",
            "  scheme: serial",
            f"  host: {_q(os.path.abspath(target.serial))}",
            "  opts:",
            f"    baud: {target.baud}",
            f"    parity: {target.parity}",
            f"    stopbits: {target.stopbits}",
            f"    bytesize: {target.bytesize}",
            "    timeout: 300ms",
            "    rate: 50pps",
            "    rs485: none               # kernel (TIOCSRS485) or rts on a board's RS-485 adapter",
        ]
    else:
        e += [
            f"{ep}:",
            "  scheme: tcp",
            f"  host: {_q(target.host or '')}",
            f"  port: {target.port}",
            "  opts:",
            "    timeout: 1000ms",
        ]
    d = [head.replace("# written", "# drivers.yml — written")]
    v = [head.replace("# written", "# variables.yml — written")]
    v.append("# One uint16 (or bool) tag per address that read back; merge 32/64-bit values and strings by hand.")
    n_tags = 0
    if not result.units:
        d.append("{}")
    for u in result.units:
        did = f"unit_{u.unit}"
        d.append(f"{did}:                      # presence read (holding 0): {u.answer}")
        for note in u.all_notes():
            d.append(f"  # {note}")
        d += [
            "  kind: static",
            f"  endpoint_id: {ep}",
            "  proto: modbus",
            f"  cfg: {{ unit_id: {u.unit}, polling: 1s }}",
        ]
        for b in u.blocks:
            for i, value in enumerate(b.values):
                addr = b.start + i
                bits = b.table in ("coil", "discrete")
                dt = "bool" if bits else "uint16"
                seen = str(bool(value)).lower() if bits else f"{value} (0x{value:04X})"
                v += [
                    f"- tag: {did}.{b.table}_{addr}",
                    f"  driver_id: {did}",
                    f"  address: {{ type: {b.table}, addr: {addr} }}",
                    f"  datatype: {dt:<8}  # read {seen}",
                ]
                n_tags += 1
    if not n_tags:
        v.append("[]")
    return {
        "endpoints.yml": "\n".join(e) + "\n",
        "drivers.yml": "\n".join(d) + "\n",
        "variables.yml": "\n".join(v) + "\n",
    }


# Written only when --out DIR lacks them, so that the directory is a complete configuration that
# `edge-cfg lint` checks; the broker and the directories are placeholders to edit.
STARTER = {
    "connector.yml": (
        "# connector.yml — a placeholder written by `edge-cfg modbus scan`: point it at your broker.\n"
        "mqtt_cloud:\n"
        "  kind: mqtt5\n"
        "  endpoint: tcp://127.0.0.1:1883\n"
        "  client_id: edge-01\n"
        "  tenant: plant\n"
        "  device: edge-01\n"
        "  qos: 1\n"
    ),
    "gateway.yml": (
        "# gateway.yml — a placeholder written by `edge-cfg modbus scan`.\n"
        "wal:\n"
        "  dir: /var/lib/edge-gateway/wal\n"
        "control:\n"
        "  socket: /run/edge-gateway/control.sock\n"
    ),
}


def write_out(out: Path, files: dict[str, str], force: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    clash = [n for n in files if (out / n).exists()]
    if clash and not force:
        raise ScanError(f"{out}: {', '.join(clash)} already exist(s); pass --force to overwrite")
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(name)
    for name, text in STARTER.items():
        if not (out / name).exists():
            (out / name).write_text(text)
            written.append(name)
    return written


# --- the command ----------------------------------------------------------------------------


def add_subparser(sub: Any) -> None:
    """`edge-cfg modbus scan ...` (the hook cli.py calls)."""
    p_modbus = sub.add_parser("modbus", help="commissioning: find the Modbus units on a line")
    msub = p_modbus.add_subparsers(dest="modbus_cmd", required=True)
    p = msub.add_parser(
        "scan",
        help="find the units that answer, probe their registers, print a starting config",
        description=(
            "Find the Modbus units that answer on a serial line (minimalmodbus) or a Modbus/TCP address "
            "(pymodbus), probe what they expose and print endpoints.yml, drivers.yml and variables.yml. "
            "Refuses a serial line a running gateway owns. Exit codes: 0 units found, 1 no unit answered, "
            "2 the line cannot be opened / bad arguments, 3 refused: the line is in use."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="DEVICE", help="serial device, e.g. /dev/ttyS1")
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus/TCP address, e.g. 192.168.10.5:502")
    p.add_argument("--baud", type=int, default=19200, help="serial: baud rate (default 19200)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="E", help="serial: parity (default E)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="serial: stop bits (default 1)")
    p.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help="serial: data bits (default 8)")
    p.add_argument("--units", default="1-247", help="unit ids to try, e.g. 1-247 or 1,2,10-20 (default 1-247)")
    p.add_argument(
        "--probe",
        default="holding:0-9,input:0-9",
        help="ranges to read on each unit found: TABLE:FROM-TO,... TABLE holding|input|coil|discrete "
        "(default holding:0-9,input:0-9)",
    )
    p.add_argument("--timeout", default="100ms", help="answer timeout per request (default 100ms)")
    p.add_argument("--out", metavar="DIR", help="write the files into DIR instead of printing them")
    p.add_argument("--force", action="store_true", help="with --out: overwrite existing files")


def run(args: argparse.Namespace) -> int:
    try:
        units = parse_units(args.units)
        probes = parse_probes(args.probe)
        timeout = parse_duration(args.timeout)
    except ValueError as e:
        print(f"edge-cfg modbus scan: {e}", file=sys.stderr)
        return EXIT_ERROR
    target = Target(args.serial, baud=args.baud, parity=args.parity, stopbits=args.stopbits, bytesize=args.bytesize)
    reader: Reader
    try:
        if args.serial:
            check_line_free(args.serial)
            reader = SerialReader(args.serial, args.baud, args.parity, args.stopbits, args.bytesize, timeout)
        else:
            host, _, port = args.tcp.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ScanError(f"--tcp {args.tcp!r}: expected HOST:PORT")
            target.host, target.port = host.strip("[]"), int(port)
            reader = TcpReader(target.host, target.port, timeout)
    except Refused as e:
        print(f"edge-cfg modbus scan: refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except ScanError as e:
        print(f"edge-cfg modbus scan: {e}", file=sys.stderr)
        return EXIT_ERROR

    tty = sys.stderr.isatty()

    def progress(i: int, total: int, unit: int, found: int) -> None:
        if tty:
            print(f"\runit {unit} ({i}/{total}), {found} found ", end="", file=sys.stderr, flush=True)

    try:
        result = scan(reader, units, probes, progress)
    except ScanError as e:
        print(f"\nedge-cfg modbus scan: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        reader.close()
    if tty:
        print(file=sys.stderr)
    for g in result.garbled:
        print(f"garbled answer (check baud/parity, or two units with one id): {g}", file=sys.stderr)
    for u in result.units:
        regs = sum(len(b.values) for b in u.blocks)
        print(f"unit {u.unit}: present ({u.answer}), {regs} address(es) read back", file=sys.stderr)
    print(f"{target.describe()}: {len(result.units)} of {result.scanned} unit(s) answered", file=sys.stderr)
    if not result.units:
        return EXIT_NONE
    files = render(target, result, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.out:
        try:
            written = write_out(Path(args.out), files, args.force)
        except (ScanError, OSError) as e:
            print(f"edge-cfg modbus scan: {e}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {', '.join(written)} to {args.out} (check: edge-cfg lint {args.out})", file=sys.stderr)
    else:
        for name, text in files.items():
            print(f"# --- {name} ---")
            print(text)
    return EXIT_FOUND
