"""S7 PLC simulator: python-snap7's server (pure Python) with DB, M, I and Q areas and a small plant.

    python tools/plcsim/s7_server.py [--port PORT] [--control PORT] [--host 127.0.0.1]

DB100 (4 KiB, zeros plus a counter word every 64 bytes) is room for benchmarks.
It prints `READY s7=<port> control=<port>` when it serves. The plant (byte offsets, big-endian as
an S7 CPU stores them) is `LAYOUT` below: a sine temperature (REAL), a counter (DINT), a running
bit that toggles, static values of every datatype and writable setpoints. A JSON-lines control
socket (127.0.0.1) reads and changes memory and injects faults while it runs:
    {"op": "get", "area": "DB", "db": 10, "start": 48, "size": 4}   -> {"hex": "41ac0000"}
    {"op": "set", "area": "DB", "db": 10, "start": 48, "hex": "41ac0000"}
    {"op": "stop"} / {"op": "start"}   stop / restart the S7 listener (clients are cut off)
    {"op": "slow", "ms": 500}          delay every S7 answer
    {"op": "stats"}                    {"requests": N, "running": true}
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import socketserver
import struct
import sys
import threading
import time
from typing import Any

from snap7.server import Server
from snap7.type import SrvArea

AREAS = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}
SIZES = {
    ("DB", 10): 256,
    ("DB", 20): 64,
    ("DB", 100): 4096,
    ("M", 0): 64,
    ("I", 0): 16,
    ("Q", 0): 16,
}

# (area, db, start, S7 type, initial value): the plant's fixed part.
LAYOUT: list[tuple[str, int, int, str, Any]] = [
    ("DB", 10, 0, "REAL", 20.0),  # temperature, sine 20 ± 5
    ("DB", 10, 4, "INT", -1234),
    ("DB", 10, 6, "DINT", 0),  # counter, +1 every tick
    ("DB", 10, 10, "WORD", 0xBEEF),
    ("DB", 10, 12, "DWORD", 0xDEADBEEF),
    ("DB", 10, 16, "LREAL", 3.141592653589793),
    ("DB", 10, 24, "STRING[20]", "hello s7"),  # 22 bytes: 24..45
    ("DB", 10, 46, "BYTE", 0b0000_1000),  # bit 0 toggles (running), bit 3 static true
    ("DB", 10, 48, "REAL", 21.5),  # setpoint (writable)
    ("DB", 10, 52, "INT", 100),  # setpoint (writable)
    ("DB", 10, 54, "BYTE", 0),  # command bits (writable)
    ("DB", 10, 56, "LINT", -5),
    ("DB", 10, 64, "UDINT", 4_000_000_000),
    ("DB", 20, 0, "REAL", -1.5),
    ("M", 0, 0, "BYTE", 0b0000_0010),
    ("M", 0, 2, "INT", 777),
    ("I", 0, 0, "BYTE", 0b1010_0101),
    ("I", 0, 2, "WORD", 4242),
    ("Q", 0, 0, "BYTE", 0b1000_0000),
]
FMT = {"REAL": ">f", "LREAL": ">d", "INT": ">h", "DINT": ">i", "WORD": ">H", "DWORD": ">I", "UDINT": ">I",
       "LINT": ">q", "BYTE": ">B"}  # fmt: skip


def pack(kind: str, value: Any) -> bytes:
    if kind.startswith("STRING["):
        cap = int(kind[7:-1])
        raw = value.encode("latin-1")
        return bytes([cap, len(raw)]) + raw + bytes(cap - len(raw))
    return struct.pack(FMT[kind], value)


class Plant:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.mem = {key: bytearray(n) for key, n in SIZES.items()}
        for area, db, start, kind, value in LAYOUT:
            raw = pack(kind, value)
            self.mem[(area, db)][start : start + len(raw)] = raw
        self.lock = threading.Lock()
        self.slow = 0.0
        self.requests = 0
        self.server: Server | None = None
        self.tick = 0

    def start(self) -> None:
        s = Server(log=False)
        for (area, db), buf in self.mem.items():
            s.register_area(AREAS[area], db, buf)
        process = s._process_request

        def slow_process(data: bytes, addr: tuple[str, int]) -> bytes | None:
            self.requests += 1
            if self.slow:
                time.sleep(self.slow)
            return process(data, addr)

        s._process_request = slow_process  # type: ignore[method-assign]
        s.start_to(self.host, self.port)
        self.server = s

    def stop(self) -> None:
        if self.server is not None:
            s, self.server = self.server, None
            s.stop()
            s.destroy()

    def write(self, area: str, db: int, start: int, raw: bytes) -> None:
        with self.lock:
            buf = self.mem[(area, db)]
            buf[start : start + len(raw)] = raw

    def read(self, area: str, db: int, start: int, size: int) -> bytes:
        with self.lock:
            return bytes(self.mem[(area, db)][start : start + size])

    def run(self, period: float = 0.1) -> None:
        while True:
            time.sleep(period)
            self.tick += 1
            db = self.mem[("DB", 10)]
            with self.lock:
                db[0:4] = struct.pack(">f", 20.0 + 5.0 * math.sin(self.tick / 20))
                db[6:10] = struct.pack(">i", self.tick)
                db[46] ^= 0x01
                big = self.mem[("DB", 100)]
                for off in range(0, 4096, 64):
                    big[off : off + 2] = struct.pack(">H", self.tick & 0xFFFF)


def serve_control(plant: Plant, port: int) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    reply = self.op(json.loads(line))
                except Exception as e:  # noqa: BLE001 - answered to the caller
                    reply = {"error": str(e)}
                self.wfile.write((json.dumps(reply) + "\n").encode())

        def op(self, m: dict[str, Any]) -> dict[str, Any]:
            op = m["op"]
            if op == "get":
                return {
                    "hex": plant.read(
                        m["area"], m.get("db", 0), m["start"], m["size"]
                    ).hex()
                }
            if op == "set":
                plant.write(
                    m["area"], m.get("db", 0), m["start"], bytes.fromhex(m["hex"])
                )
                return {"ok": True}
            if op == "stop":
                plant.stop()
                return {"ok": True}
            if op == "start":
                if plant.server is None:
                    plant.start()
                return {"ok": True}
            if op == "slow":
                plant.slow = m["ms"] / 1000
                return {"ok": True}
            if op == "stats":
                return {"requests": plant.requests, "running": plant.server is not None}
            return {"error": f"unknown op {op!r}"}

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="S7 port (0: a free one)")
    ap.add_argument(
        "--control", type=int, default=0, help="control port (0: a free one)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plant = Plant(args.host, args.port or _free_port())
    plant.start()
    ctl = serve_control(plant, args.control or _free_port())
    print(f"READY s7={plant.port} control={ctl.server_address[1]}", flush=True)
    try:
        plant.run()
    except KeyboardInterrupt:
        pass
    plant.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
