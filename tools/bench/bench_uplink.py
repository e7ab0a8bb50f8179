#!/usr/bin/env python3
"""The uplink path alone: committed WAL → cursor → batches (JSON, zstd) → Mosquitto at QoS 2.

A WAL is filled and committed first (no producer, no WAL writer running), then the delivery runner
sends it all; the rate is frames finally acknowledged (PUBCOMP) per second of the runner's run, and
its CPU is the process's user + system time over that run (the runner is the only busy thread).
Two reads of the same WAL: `live` (the frames in the WAL's memory cache, as when the uplink keeps
up) and `backlog` (the WAL reopened, every frame read from the segment files, as after an outage).
A reference subscriber in another process checks that every seq arrived (zero loss).

    .venv/bin/python tools/bench/bench_uplink.py --out build/bench [--quick]
writes build/bench/uplink.json and build/bench/uplink.md.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import args, write
from bench_e2e import connector, finish_consumer, start_consumer
from edge_gateway.bus import wal as walmod
from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import WalCfg
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

| batch / window | read | frames/s | CPU ms per 1 000 frames | delivered | zstd ratio | load avg |
|---|---|---|---|---|---|---|
{rows}
"""
    write(a.out, "uplink", {"runs": runs, "target_frames_per_s": 300000}, md)


if __name__ == "__main__":
    main()
