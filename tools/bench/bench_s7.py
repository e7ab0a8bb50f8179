#!/usr/bin/env python3
"""S7 benchmark: 1 000 variables polled at 100 ms from the snap7 server (tools/plcsim/s7_server.py, a
subprocess on 127.0.0.1) by one S7 line thread into a counting bus (standing in for the FrameBus).

Figures: requests per cycle (planner quality: the plan against one request per variable), cycles
achieved against the 100 ms schedule, frames/s, gateway-side CPU-s per 1 000 frames (the process's
CPU time; the server runs in its own process).

    .venv/bin/python tools/bench/bench_s7.py --out build/bench [--quick]
writes build/bench/s7.json and build/bench/s7.md.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import _common
from edge_gateway.core.driver import DeviceItem, EndpointItem, TagItem
from edge_gateway.drivers.s7.line import S7Line
from edge_gateway.drivers.s7.plugin import PLUGIN

SERVER = Path(__file__).resolve().parents[1] / "plcsim" / "s7_server.py"


class CountingBus:
    def __init__(self) -> None:
        self.n = self.bad = 0
        self.lock = threading.Lock()

    def publish(self, frames: list) -> None:
        with self.lock:
            self.n += len(frames)
            self.bad += sum(1 for f in frames if f.q != "good")


def tags() -> list[TagItem]:
    out: list[TagItem] = []

    def add(name: str, dt: str, **a: object) -> None:
        out.append(TagItem(name, "plc1", "R", dt, PLUGIN.build_address(name, dt, a)))

    for i in range(600):  # INTs every 4 bytes: 0..2396
        add(f"int.{i}", "int16", area="DB", db=100, start=4 * i)
    for i in range(300):  # REALs every 5 bytes from 2400: 2400..3899
        add(f"real.{i}", "float32", area="DB", db=100, start=2400 + 5 * i)
    for i in range(60):  # BOOLs in DB10
        add(f"bit.{i}", "bool", area="DB", db=10, start=100 + i // 8, bit=i % 8)
    for i in range(40):  # M bits
        add(f"m.{i}", "bool", area="M", start=i // 8, bit=i % 8)
    return out


def main() -> None:
    a = _common.args(__doc__.splitlines()[0])
    seconds = 5.0 if a.quick else 20.0
    srv = subprocess.Popen(
        [sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline().split()[1].split("=")[1])
        ts = tags()
        ep = EndpointItem(
            "plc", "s7", "127.0.0.1", port, PLUGIN.build_endpoint("plc", "s7", {})
        )
        dev = DeviceItem(
            "plc1",
            "static",
            "s7",
            "plc",
            PLUGIN.build_cfg("plc1", {"polling": "100ms"}),
        )
        bus = CountingBus()
        line = S7Line(ep, [dev], ts, bus)
        line.start()
        while line.status()["plc1"]["cycles"] == 0:
            time.sleep(0.05)
        c0, n0, cpu0, t0 = (
            line.status()["plc1"]["cycles"],
            bus.n,
            time.process_time(),
            time.monotonic(),
        )
        time.sleep(seconds)
        st = line.status()["plc1"]
        c1, n1, cpu1, t1 = st["cycles"], bus.n, time.process_time(), time.monotonic()
        line.stop()
    finally:
        srv.kill()
        srv.wait(10)
    frames = n1 - n0
    figures = {
        "variables": len(ts),
        "polling_s": 0.1,
        "pdu": st["pdu"],
        "requests_per_cycle": st["requests_per_cycle"],
        "cycles_per_s": round((c1 - c0) / (t1 - t0), 2),
        "schedule_ratio": round((c1 - c0) / (t1 - t0) / 10, 3),
        "frames_per_s": round(frames / (t1 - t0)),
        "cpu_s_per_1000_frames": round((cpu1 - cpu0) / frames * 1000, 4)
        if frames
        else None,
        "bad_frames": bus.bad,
        "seconds": round(t1 - t0, 1),
    }
    md = (
        "## S7 (snap7 server, 1 000 variables at 100 ms)\n\n"
        "| variables | PDU | requests/cycle | cycles/s (target 10) | frames/s | CPU-s / 1 000 frames | bad |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {figures['variables']} | {figures['pdu']} | {figures['requests_per_cycle']} | "
        f"{figures['cycles_per_s']} | {figures['frames_per_s']} | {figures['cpu_s_per_1000_frames']} | "
        f"{figures['bad_frames']} |\n"
    )
    _common.write(a.out, "s7", figures, md)


if __name__ == "__main__":
    main()
