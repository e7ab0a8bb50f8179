"""PLC simulator: Modbus/TCP and Modbus RTU (on one end of a pty pair) from a profile file.

    python tools/plcsim/plcsim.py PROFILE [--tcp PORT] [--rtu PTY --baud 19200] [--control PORT]

It prints `READY tcp=<port> control=<port>` when it serves. Registers hold typed points
(uint16 … float64, string) that are static or change over time (ramp, sine, counter), in
the byte/word order the profile gives. Faults per unit: no answer, slow answer, exception
codes for address ranges, a bad CRC every Nth RTU reply, garbage bytes before every Nth reply,
TCP disconnect every N seconds. On RTU each reply is delayed by the time the request and the
reply would take on the wire at `--baud`, plus the 3.5-character silence, because a pty
delivers bytes instantly. A JSON-lines control socket (127.0.0.1) changes faults and values
while it runs: {"op": "fault", "unit": 2, "no_answer": true}, {"op": "get", "unit": 1,
"table": "holding", "addr": 20}, {"op": "set", ...}, {"op": "stats"}.

The RTU and TCP slave loops are written here rather than with pymodbus' server because
the simulator must misbehave on purpose (cut CRCs, stray bytes, silence) and keep exact wire
time; tests also run the gateway against a genuine pymodbus server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))
from edge_gateway.drivers.modbus import rtu
from edge_gateway.drivers.modbus.codec import FMT
from edge_gateway.drivers.modbus.model import DATATYPE_REGS


@dataclass
class Point:
    table: str
    addr: int
    type: str
    value: Any
    endian: str = "big"
    word_order: str = "big"
    length: int = 1
    _memo: tuple[Any, list[int] | bool] | None = field(default=None, repr=False)

    def current(self, t: float) -> Any:
        v = self.value
        if isinstance(v, dict):
            if "ramp" in v:
                r = v["ramp"]
                span = r.get("max", 1000) - r.get("start", 0)
                return r.get("start", 0) + (t * r.get("per_s", 1)) % max(1, span)
            if "sine" in v:
                s = v["sine"]
                return s.get("offset", 0) + s.get("amp", 1) * math.sin(
                    2 * math.pi * t / s.get("period", 60)
                )
            if "counter" in v:
                return int(
                    v["counter"].get("start", 0) + t * v["counter"].get("per_s", 1)
                )
        return v

    def registers(self, t: float) -> list[int] | bool:
        v = self.current(t)
        memo = (
            self._memo
        )  # a counter changes once a second: re-encoding it on every read is the cost
        if memo is not None and memo[0] == v and type(memo[0]) is type(v):
            return memo[1]
        regs = self._encode(v)
        self._memo = (v, regs)
        return regs

    def _encode(self, v: Any) -> list[int] | bool:
        if self.table in ("coil", "discrete"):
            return bool(v)
        if self.type == "bool":
            return [1 if v else 0]
        if self.type == "string":
            raw = str(v).encode().ljust(2 * self.length, b"\0")[: 2 * self.length]
            regs = list(struct.unpack(f">{self.length}H", raw))
            numeric = False
        else:
            n = v if self.type.startswith("float") else round(v)
            raw = struct.pack(FMT[self.type], n)
            regs = list(struct.unpack(f">{len(raw) // 2}H", raw))
            numeric = True
        if numeric and self.word_order == "little":
            regs = regs[::-1]
        if self.endian == "little":
            regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
        return regs


@dataclass
class Unit:
    unit: int
    points: list[Point] = field(default_factory=list)
    no_answer: bool = False
    slow_ms: float = 0.0
    exceptions: list[dict[str, int]] = field(
        default_factory=list
    )  # {table?, from, to, code}
    bad_crc_every: int = 0
    garbage_every: int = 0
    written: dict[tuple[str, int], int | bool] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (table, addr) → the point covering it (the first in profile order, as a linear scan would find):
    # a scan per register made a 125-register read cost O(points) each, the simulator's limit under load.
    _index: dict[tuple[str, int], Point] = field(default_factory=dict, repr=False)

    def index(self) -> None:
        self._index = {}
        for p in self.points:
            for a in range(p.addr, p.addr + p.length):
                self._index.setdefault((p.table, a), p)

    def value_at(self, table: str, addr: int, t: float) -> int | bool:
        if (table, addr) in self.written:
            return self.written[(table, addr)]
        p = self._index.get((table, addr))
        if p is not None:
            regs = p.registers(t)
            return regs if isinstance(regs, bool) else regs[addr - p.addr]
        return False if table in ("coil", "discrete") else 0

    def exception_for(self, table: str, start: int, count: int) -> int:
        for e in self.exceptions:
            if (
                e.get("table", table) == table
                and start <= e["to"]
                and e["from"] < start + count
            ):
                return int(e.get("code", 2))
        return 0


TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class Plc:
    def __init__(self, units: list[dict[str, Any]]) -> None:
        self.t0 = time.monotonic()
        self.units: dict[int, Unit] = {}
        for u in units:
            unit = Unit(u["unit"])
            for p in u.get("points", []):
                dt = p.get(
                    "type", "bool" if p["table"] in ("coil", "discrete") else "uint16"
                )
                length = p.get("len", DATATYPE_REGS.get(dt) or 1)
                unit.points.append(
                    Point(
                        p["table"],
                        p["addr"],
                        dt,
                        p.get("value", 0),
                        p.get("endian", "big"),
                        p.get("word_order", "big"),
                        length,
                    )
                )
            self.set_faults(unit, u.get("faults", {}))
            unit.index()
            self.units[unit.unit] = unit

    @staticmethod
    def set_faults(unit: Unit, f: dict[str, Any]) -> None:
        for k in ("no_answer", "slow_ms", "bad_crc_every", "garbage_every"):
            if k in f:
                setattr(unit, k, f[k])
        if "exceptions" in f:
            unit.exceptions = list(f["exceptions"])

    def execute(self, unit_id: int, pdu: bytes) -> bytes | None:
        """The reply PDU, or None for silence."""
        unit = self.units.get(unit_id)
        if unit is None or unit.no_answer:
            return None
        with unit.lock:
            unit.requests += 1
        if unit.slow_ms:
            time.sleep(unit.slow_ms / 1000)
        fc = pdu[0]
        t = time.monotonic() - self.t0
        try:
            if fc in (1, 2, 3, 4):
                start, count = struct.unpack_from(">HH", pdu, 1)
                table = TABLE[fc]
                limit = 2000 if fc in (1, 2) else 125
                if not 1 <= count <= limit or start + count > 65536:
                    return bytes([fc | 0x80, 3])
                code = unit.exception_for(table, start, count)
                if code:
                    return bytes([fc | 0x80, code])
                values = [
                    unit.value_at(table, a, t) for a in range(start, start + count)
                ]
                if fc in (3, 4):
                    return struct.pack(f">BB{count}H", fc, 2 * count, *values)
                packed = bytearray((count + 7) // 8)
                for i, b in enumerate(values):
                    if b:
                        packed[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(packed)]) + bytes(packed)
            if fc in (5, 6):
                addr, value = struct.unpack_from(">HH", pdu, 1)
                table = "coil" if fc == 5 else "holding"
                if fc == 5 and value not in (0, 0xFF00):
                    return bytes([fc | 0x80, 3])
                code = unit.exception_for(table, addr, 1)
                if code:
                    return bytes([fc | 0x80, code])
                unit.written[(table, addr)] = (value == 0xFF00) if fc == 5 else value
                return pdu[:5]
            if fc in (15, 16):
                addr, count, _nbytes = struct.unpack_from(">HHB", pdu, 1)
                table = "coil" if fc == 15 else "holding"
                code = unit.exception_for(table, addr, count)
                if code:
                    return bytes([fc | 0x80, code])
                data = pdu[6:]
                for i in range(count):
                    if fc == 16:
                        unit.written[(table, addr + i)] = struct.unpack_from(
                            ">H", data, 2 * i
                        )[0]
                    else:
                        unit.written[(table, addr + i)] = bool(
                            data[i // 8] >> (i % 8) & 1
                        )
                return pdu[:5]
        except (struct.error, IndexError):
            return bytes([fc | 0x80, 3])
        return bytes([fc | 0x80, 1])

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "stats":
            return {u.unit: u.requests for u in self.units.values()}
        unit = self.units.get(int(req.get("unit", 0)))
        if unit is None:
            return {"error": f"no unit {req.get('unit')}"}
        if op == "fault":
            self.set_faults(unit, req)
            return {"ok": True}
        if op == "get":
            return {
                "value": unit.value_at(
                    req["table"], int(req["addr"]), time.monotonic() - self.t0
                )
            }
        if op == "set":
            unit.written[(req["table"], int(req["addr"]))] = req["value"]
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}


def request_length(buf: bytes) -> int | None:
    """RTU request length from its first bytes (what a real slave must work out)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return 8


def serve_rtu(plc: Plc, path: str, baud: int, parity: str, echo: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    import termios
    import tty

    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    bits = 1 + 8 + (0 if parity == "N" else 1) + 1
    char = bits / baud
    silence = 0.00175 if baud > 19200 else 3.5 * char
    buf = b""
    replies = 0
    rtu.precise_sleeps()  # the emulated wire time is a sleep: keep it within microseconds
    while True:
        buf += os.read(fd, 512)
        received = time.monotonic()
        while (n := request_length(buf)) is not None and len(buf) >= n:
            req, buf = buf[:n], buf[n:]
            if echo:
                os.write(
                    fd, req
                )  # what a transceiver with its receiver left enabled gives back
            if not rtu.check(req):
                buf = (
                    b""  # a real slave drops a bad frame and resynchronises on silence
                )
                break
            reply = plc.execute(req[0], req[1:-2])
            if reply is None:
                continue
            unit = plc.units[req[0]]
            adu = rtu.frame(req[0], reply)
            replies += 1
            if unit.bad_crc_every and replies % unit.bad_crc_every == 0:
                adu = adu[:-1] + bytes([adu[-1] ^ 0xFF])
            if unit.garbage_every and replies % unit.garbage_every == 0:
                adu = b"\x00\xff\x13" + adu
            # The request's bytes, the slave's 3.5-char gap and the reply's bytes all take wire time,
            # counted from the request's arrival: the simulator's own work happens inside that time, as a
            # device's does while the bytes are still on the wire (a unit's slow_ms still adds to it).
            wire = (len(req) + len(adu)) * char + silence
            wait = received + unit.slow_ms / 1000 + wire - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            os.write(fd, adu)
            # a second request in the same read waits behind this reply
            received = time.monotonic()


class _TcpHandler(socketserver.BaseRequestHandler):
    plc: Plc
    disconnect_every: float = 0.0

    def handle(self) -> None:
        sock: socket.socket = self.request
        opened = time.monotonic()
        buf = b""
        while True:
            if (
                self.disconnect_every
                and time.monotonic() - opened > self.disconnect_every
            ):
                return
            sock.settimeout(0.2)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 7:
                tid, _proto, length, unit = struct.unpack_from(">HHHB", buf)
                if len(buf) < 6 + length:
                    break
                pdu, buf = buf[7 : 6 + length], buf[6 + length :]
                reply = self.plc.execute(unit, pdu)
                if reply is not None:
                    sock.sendall(
                        struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply
                    )


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_control(plcs: dict[str, Plc], srv: socket.socket) -> None:
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rw") as f:
            for line in f:
                try:
                    req = json.loads(line)
                    out = plcs[req.get("bus", "tcp")].control(req)
                except (ValueError, KeyError, TypeError) as e:
                    out = {"error": str(e)}
                f.write(json.dumps(out) + "\n")
                f.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument(
        "--tcp", type=int, help="serve Modbus/TCP on 127.0.0.1:PORT (0 = any free port)"
    )
    ap.add_argument(
        "--rtu", action="append", default=[], help="serve RTU on this pty (repeatable)"
    )
    ap.add_argument("--baud", type=int, default=19200)
    ap.add_argument("--parity", default="E")
    ap.add_argument(
        "--echo",
        action="store_true",
        help="echo each RTU request like a local-echo adapter",
    )
    ap.add_argument(
        "--control", type=int, default=0, help="JSON control socket port on 127.0.0.1"
    )
    ap.add_argument(
        "--disconnect-every",
        type=float,
        default=0.0,
        help="drop TCP connections after N s",
    )
    args = ap.parse_args(argv)
    profile = yaml.safe_load(Path(args.profile).read_text())
    plc = Plc(profile.get("units", []))
    # `rtu_units` lets the RS-485 line carry other devices than the TCP PLC (same unit ids allowed).
    plcs = {
        "tcp": plc,
        "rtu": Plc(profile["rtu_units"]) if "rtu_units" in profile else plc,
    }
    ready = []
    if args.tcp is not None:
        _TcpHandler.plc = plc
        _TcpHandler.disconnect_every = args.disconnect_every
        srv = _Server(("127.0.0.1", args.tcp), _TcpHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        ready.append(f"tcp={srv.server_address[1]}")
    for path in args.rtu:
        threading.Thread(
            target=serve_rtu,
            args=(plcs["rtu"], path, args.baud, args.parity, args.echo),
            daemon=True,
        ).start()
    ctl = socket.create_server(("127.0.0.1", args.control))
    threading.Thread(target=serve_control, args=(plcs, ctl), daemon=True).start()
    ready.append(f"control={ctl.getsockname()[1]}")
    print("READY " + " ".join(ready), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
