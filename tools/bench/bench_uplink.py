#!/usr/bin/env python3
"""The uplink path alone: committed WAL → cursor → batches (JSON, zstd) → Mosquitto at QoS 2.

A WAL is filled and committed first (no producer, no WAL writer running), then the delivery runner
sends it all; the rate is frames finally acknowledged (PUBCOMP) per second of the runner's run, and
its CPU is the process's user + system time over that run (the runner is the only busy thread).
Two reads of the same WAL: `live` (the frames in the WAL's memory cache, as when the uplink keeps
up) and `backlog` (the WAL reopened, every frame read from the segment files, as after an outage).
A reference subscriber in another process checks that every seq arrived (zero loss).

`paced`: the whole path behind acquisition at the rate of issue 19's comparison (10 units × 360
registers every 100 ms = 36 000 frames/s offered): a producer thread publishes those poll cycles on
the bus, the WAL writer group-commits with fsync, the runner sends at QoS 2 with zstd. CPU per 1 000
frames is the process's CPU minus the producer thread's own (creating frames is the driver's work),
over the run after a 2 s warm-up.

    .venv/bin/python tools/bench/bench_uplink.py --out build/bench [--quick]
writes build/bench/uplink.json and build/bench/uplink.md.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import args, write
from bench_e2e import connector, finish_consumer, start_consumer
from edge_gateway.bus import open_bus_and_wal
from edge_gateway.bus import wal as walmod
from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import BusCfg, GatewayCfg, WalCfg
from edge_gateway.core.frame import Frame
from edge_gateway.delivery.runner import Runner
from edge_gateway.testkit import Mosquitto

TAGS = [f"plant.line{i % 8}.dev{i % 64:02d}.value{i % 5}" for i in range(1000)]


def fill(d: Path, n: int) -> Wal:
    """n frames in 1000-frame records, committed 8 records at a time (what a busy writer does); the
    WAL is returned open, with every frame still in its memory cache."""
    keep, walmod.CACHE_FRAMES = walmod.CACHE_FRAMES, n  # read at each commit
    try:
        wal = Wal.open(WalCfg(dir=str(d), max_bytes=64 << 30))
        wal.cursor("bench")
        ts = 1_763_800_000_000
        seq = 1
        while seq <= n:
            for _ in range(8):
                k = min(1000, n - seq + 1)
                if k <= 0:
                    break
                wal.append([Frame(seq + i, ts + (seq + i) // 1000, TAGS[(seq + i) % 1000], (seq + i) * 0.25)
                            for i in range(k)])  # fmt: skip
                seq += k
            wal.commit()
    finally:
        walmod.CACHE_FRAMES = keep
    return wal


def send(
    d: Path, n: int, batch: int, window: int, live: bool, work: Path
) -> dict[str, Any]:
    """`live`: a freshly filled WAL, read from memory; else the same WAL reopened, read from the files."""
    if live:
        shutil.rmtree(d, ignore_errors=True)
        wal = fill(d, n)
    else:
        (d / "cursors" / "bench.ack").write_text("0\n")
        wal = Wal.open(WalCfg(dir=str(d), max_bytes=64 << 30))
    broker = Mosquitto(workdir=work / f"mosq-{batch}-{live}").start()
    consumer = start_consumer(broker.port, n, "/edge/bench/gw/batch")
    up = Runner(connector(broker.port, batch), wal.cursor("bench"), window=window)
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    up.start()
    while up.cursor.acked < n and time.monotonic() - t0 < 300:
        time.sleep(0.002)
    t1 = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    summary = finish_consumer(consumer, timeout=120)
    stats = up.stats()
    up.stop()
    broker.stop()
    wal.close()
    acked = up.cursor.acked
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return {
        "read": "live" if live else "backlog",
        "frames": n,
        "batch": batch,
        "window": window,
        "qos": 2,
        "compression": "zstd",
        "acked": acked,
        "delivered": summary.get("frames", 0),
        "duplicates": summary.get("duplicates"),
        "seconds": round(t1 - t0, 3),
        "frames_per_s": round(acked / (t1 - t0)),
        "cpu_ms_per_1000_frames": round(1000 * cpu / max(1, acked) * 1000, 3),
        "zstd_ratio_on_wire": stats["compression_ratio"],
        "loadavg": [round(x, 2) for x in load],
    }


def paced(
    work: Path, seconds: float, batch: int = 32, units: int = 10, regs: int = 360
) -> dict[str, Any]:
    """`units` poll cycles of `regs` frames every 100 ms through bus, WAL writer (fsync) and runner."""
    warm = 2.0
    cycles = int((warm + seconds) * 10)
    n = cycles * units * regs
    broker = Mosquitto(workdir=work / "mosq-paced").start()
    consumer = start_consumer(broker.port, n, "/edge/bench/gw/batch")
    bus, wal, writer = open_bus_and_wal(
        GatewayCfg(bus=BusCfg(), wal=WalCfg(dir=str(work / "wal-paced")))
    )
    up = Runner(connector(broker.port, batch), wal.cursor("bench"), record=bus.publish)
    writer.add_listener(up.wake)
    writer.start()
    up.start()
    while not up.connected:
        time.sleep(0.01)
    tags = [[f"plant.u{u:02d}.hr{r:03d}" for r in range(regs)] for u in range(units)]
    marks: dict[str, float] = {}
    skipped = 0

    def produce() -> None:
        nonlocal skipped
        t = time.monotonic()
        for c in range(cycles):
            if c == int(warm * 10):
                marks["producer_cpu0"] = time.thread_time()
                marks["cpu0"] = _cpu()
                marks["writer_cpu0"], marks["runner_cpu0"] = (
                    _thread_cpu(writer),
                    _thread_cpu(up),
                )
                marks["acked0"] = up.cursor.acked
            ts = 1_763_800_000_000 + c * 100
            for u in range(units):
                if bus.paused:
                    skipped += regs
                    continue
                bus.publish(
                    [
                        Frame(0, ts, tag, (c * 7 + i) * 0.5)
                        for i, tag in enumerate(tags[u])
                    ]
                )
            t += 0.1
            time.sleep(max(0.0, t - time.monotonic()))
        marks["producer_cpu1"] = time.thread_time()

    load = os.getloadavg()
    p = threading.Thread(target=produce, name="producer")
    t0 = time.monotonic()
    p.start()
    p.join()
    while up.cursor.acked < n - skipped and time.monotonic() - t0 < warm + seconds + 60:
        time.sleep(0.005)
    cpu1 = _cpu()
    writer_cpu, runner_cpu = (
        _thread_cpu(writer) - marks["writer_cpu0"],
        _thread_cpu(up) - marks["runner_cpu0"],
    )
    elapsed = time.monotonic() - t0
    summary = finish_consumer(consumer, timeout=60)
    up.stop()
    writer.stop()
    broker.stop()
    frames = up.cursor.acked - marks["acked0"]
    cpu = cpu1 - marks["cpu0"] - (marks["producer_cpu1"] - marks["producer_cpu0"])
    return {
        "read": "paced",
        "frames": n,
        "offered_frames_per_s": units * regs * 10,
        "batch": batch,
        "window": 32,
        "qos": 2,
        "compression": "zstd",
        "acked": up.cursor.acked,
        "delivered": summary.get("frames", 0),
        "skipped_polls_frames": skipped,
        "duplicates": summary.get("duplicates"),
        "seconds": round(elapsed, 3),
        "frames_per_s": round(up.cursor.acked / elapsed),
        "cpu_ms_per_1000_frames": round(1e6 * cpu / max(1, frames), 3),
        "writer_cpu_ms_per_1000_frames": round(1e6 * writer_cpu / max(1, frames), 3),
        "runner_cpu_ms_per_1000_frames": round(1e6 * runner_cpu / max(1, frames), 3),
        "producer_cpu_ms_per_1000_frames": round(
            1e6 * (marks["producer_cpu1"] - marks["producer_cpu0"]) / max(1, frames), 3
        ),
        "zstd_ratio_on_wire": up.stats()["compression_ratio"],
        "loadavg": [round(x, 2) for x in load],
    }


def _thread_cpu(t: threading.Thread) -> float:
    assert t.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(t.ident))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    a = args(__doc__.split("\n")[0])
    n = 200_000 if a.quick else 1_000_000
    root = Path(
        tempfile.mkdtemp(
            prefix="bench-uplink-", dir="build" if Path("build").is_dir() else None
        )
    )
    runs = []
    try:
        d = root / "wal"
        for batch, window in ((32, 32), (256, 16)):
            for live in (True, False):
                r = send(d, n, batch, window, live, root)
                print(r, flush=True)
                runs.append(r)
        r = paced(root, 4.0 if a.quick else 15.0)
        print(r, flush=True)
        runs.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = "\n".join(
        f"| {r['batch']} / {r['window']} | {r['read']} | {r['frames_per_s']:,} | {r['cpu_ms_per_1000_frames']} |"
        f" {r['delivered']:,} of {r['frames']:,} | {r['zstd_ratio_on_wire']} | {r['loadavg'][0]} |"
        for r in runs
    )
    md = f"""## Uplink path alone (`tools/bench/bench_uplink.py`)

A committed WAL of {n:,} frames sent by the delivery runner to Mosquitto, QoS 2, zstd; rate = frames
acknowledged (PUBCOMP) per second; CPU = the gateway process over the run. Target ≥ 300,000 frames/s.
`paced`: bus + WAL writer (fsync) + runner at 36 000 frames/s offered (10 × 360-frame polls every 100 ms);
its CPU excludes the producer thread that creates the frames (the driver's share).

| batch / window | read | frames/s | CPU ms per 1 000 frames | delivered | zstd ratio | load avg |
|---|---|---|---|---|---|---|
{rows}
"""
    write(a.out, "uplink", {"runs": runs, "target_frames_per_s": 300000}, md)


if __name__ == "__main__":
    main()
