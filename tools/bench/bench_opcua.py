#!/usr/bin/env python3
"""OPC UA benchmark: 1 000 nodes of the plcsim OPC UA server (tools/plcsim/opcua_server.py --bench 1000,
a subprocess on 127.0.0.1) read by the real `edge-gateway run` and delivered through the WAL to Mosquitto,
where a subscriber in this process counts and times them. Two runs, one gateway each:
  * subscription: every node a monitored item, publishing interval and sampling 100 ms; the server
    changes every node every 100 ms;
  * polling: the Read service every 1 s (100 nodes per request); the server changes every node every 1 s.

Figures per run: frames/s delivered to the broker; the gateway's CPU-s per 1 000 frames (utime + stime
of its PID from /proc/PID/stat over the measured window); latency from the server-side change to the
arrival at the subscriber, p50/p99 (the server stamps each change as the node's SourceTimestamp, which
the frame carries as `ts`; the subscriber takes its clock at arrival — same host, same clock); and the
load average at the end (the machine is shared: compare back-to-back runs only).

    .venv/bin/python tools/bench/bench_opcua.py --out build/bench [--quick]
writes build/bench/opcua.json and build/bench/opcua.md.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid
from tests.consumer import BatchSubscriber, Message

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tools" / "plcsim" / "opcua_server.py"
BIN = Path(sys.executable).parent
NODES = 1000
NSU = "urn:edge-gateway:plcsim"


class Arrivals:
    """Frames of the bench nodes as they reach the subscriber: a count and the latencies (ms)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0
        self.latencies: list[float] = []
        self.bad = 0
        self.recording = False
        self.changes: set[int] = (
            set()
        )  # the server's change counters seen (value // 10 000)

    def __call__(self, f: dict[str, Any], _m: Message) -> None:
        now = time.time() * 1000
        if not str(f.get("tag", "")).startswith("b."):
            return
        with self.lock:
            if not self.recording:
                return
            self.n += 1
            if f.get("q") != "good":
                self.bad += 1
            else:
                self.latencies.append(now - float(f["ts"]))
                if isinstance(f.get("value"), int | float):
                    self.changes.add(int(f["value"]) // 10_000)


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(d: Path, ua_port: int, broker_port: int, mode: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    nodes = [f"nsu={NSU};s=Bench.{i}" for i in range(NODES)]
    if mode == "subscription":
        subs = "".join(f'      - {{ node: "{n}", sample: 100 }}\n' for n in nodes)
        cfg = f"    publishing_interval: 100\n    subscriptions:\n{subs}"
    else:
        cfg = "    polling: 1000\n    max_nodes_per_read: 100\n"
    files = {
        "endpoints.yml": f"ua:\n  scheme: opc.tcp\n  host: {LOOPBACK}\n  port: {ua_port}\n  opts: {{ timeout: 10 }}\n",
        "drivers.yml": f"bench:\n  kind: static\n  proto: opcua\n  endpoint_id: ua\n  cfg:\n{cfg}",
        "variables.yml": "".join(
            f'- {{ tag: b.{i}, driver_id: bench, datatype: double, address: {{ node: "{n}" }} }}\n'
            for i, n in enumerate(nodes)
        ),
        "connector.yml": f'cloud:\n  kind: mqtt5\n  endpoint: "tcp://{LOOPBACK}:{broker_port}"\n'
        "  tenant: bench\n  device: gw\n  qos: 1\n  batch: 256\n  max_interval: 100ms\n",
        "gateway.yml": f"wal: {{ dir: {d / 'wal'}, max_bytes: 1GiB }}\ncontrol: {{ socket: {d / 'control.sock'} }}\n"
        f"metrics: {{ listen: 127.0.0.1:{free_port()} }}\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def run(mode: str, seconds: float, work: Path) -> dict[str, Any]:
    period = 0.1 if mode == "subscription" else 1.0
    port = free_port()
    srv = subprocess.Popen(
        [sys.executable, str(SERVER), "--host", LOOPBACK, "--port", str(port),
         "--bench", str(NODES), "--bench-period", str(period)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    broker = Mosquitto(workdir=work / f"mosq-{mode}").start()
    arrivals = Arrivals()
    sub = BatchSubscriber(
        LOOPBACK, broker.port, ("/edge/#",), on_frame=arrivals, keep=False
    ).start()
    gw: subprocess.Popen[bytes] | None = None
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the OPC UA simulator did not start: {line!r}")
        cfg = config(work / f"cfg-{mode}", port, broker.port, mode)
        log = open(work / f"gateway-{mode}.log", "wb")  # noqa: SIM115 - the child holds it
        gw = subprocess.Popen(
            [str(BIN / "edge-gateway"), "run", "--config", str(cfg)],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while (
            sub.frames_seen < NODES and time.monotonic() < deadline
        ):  # connected, subscribed, flowing
            time.sleep(0.1)
        time.sleep(2.0)  # warm-up past the first full read / initial notifications
        with arrivals.lock:
            arrivals.recording = True
        cpu0, scpu0, t0 = cpu_s(gw.pid), cpu_s(srv.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, scpu1, t1 = cpu_s(gw.pid), cpu_s(srv.pid), time.monotonic()
        with arrivals.lock:
            arrivals.recording = False
            n, lat, bad = arrivals.n, sorted(arrivals.latencies), arrivals.bad
            changes = len(arrivals.changes)
        load = os.getloadavg()
    finally:
        if gw is not None:
            stop_pid(gw)  # type: ignore[arg-type]
        sub.stop()
        stop_pid(srv)  # type: ignore[arg-type]
        broker.stop()
    elapsed = t1 - t0

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

    return {
        "mode": mode,
        "nodes": NODES,
        "interval_ms": int(period * 1000),
        "offered_changes_per_s": round(NODES / period),
        # what the server actually made: distinct change rounds seen × nodes (it skips a late round)
        "server_changes_per_s": round(changes * NODES / elapsed),
        "frames_per_s": round(n / elapsed),
        "cpu_s_per_1000_frames": round((cpu1 - cpu0) / n * 1000, 4) if n else None,
        "gateway_cpu_pct": round((cpu1 - cpu0) / elapsed * 100, 1),
        "server_cpu_pct": round(
            (scpu1 - scpu0) / elapsed * 100, 1
        ),  # near 100: the simulator is the limit
        "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p99": pct(0.99),
        "bad_frames": bad,
        "seconds": round(elapsed, 1),
        "loadavg": [round(x, 2) for x in load],
    }


def main() -> None:
    a = _common.args(__doc__.splitlines()[0])
    seconds = 8.0 if a.quick else 30.0
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        runs = [run(mode, seconds, Path(tmp)) for mode in ("subscription", "polling")]
    rows = "".join(
        f"| {r['mode']} | {r['nodes']} | {r['interval_ms']} ms | {r['offered_changes_per_s']} | {r['server_changes_per_s']} | {r['frames_per_s']} | "
        f"{r['cpu_s_per_1000_frames']} | {r['gateway_cpu_pct']} % | {r['server_cpu_pct']} % | {r['latency_ms_p50']} | {r['latency_ms_p99']} | "
        f"{r['bad_frames']} | {' '.join(str(x) for x in r['loadavg'])} |\n"
        for r in runs
    )
    md = (
        "## OPC UA (plcsim asyncua server → edge-gateway → WAL → Mosquitto)\n\n"
        "| mode | nodes | interval | changes/s nominal | changes/s made | frames/s delivered | gateway CPU-s / 1 000 frames "
        "| gateway CPU | server CPU | latency p50 ms | latency p99 ms | bad | load avg 1/5/15 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        + rows
        + "\nLatency: from the server's change (SourceTimestamp) "
        "to the subscriber's arrival, through the publishing interval or the poll period, the WAL group commit "
        "(100 ms) and the batcher (max_interval 100 ms); when polling, also the phase between the server's change "
        "and the next poll (0 to 1 s, different in every run). A server CPU near 100 % means the asyncua simulator, not the gateway, sets the delivered rate. "
        "The machine is shared: figures move with the load.\n"
    )
    _common.write(a.out, "opcua", {"runs": runs}, md)


if __name__ == "__main__":
    main()
