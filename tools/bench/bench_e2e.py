#!/usr/bin/env python3
"""End-to-end benchmark: frames/s through Mosquitto with QoS2 + zstd and zero loss, the zstd ratio on
realistic batches, and the gateway's resident memory with 1 000 and 10 000 tags (SPEC §9).

Two throughput figures, because they measure different things:
  * uplink path: synthetic frames published onto the FrameBus of an in-process pipeline
    (bus → WAL writer with fsync → WAL → MQTT 5 thread → Mosquitto → a subscriber in another process).
    This is the capacity of everything after acquisition; the target (≥ 50 000 frames/s) is for it.
  * simulator-driven (e2e_gateway.py): the real `edge-gateway` process polling PLC simulators over
    Modbus/TCP, through the same path to a subscriber process. Offered (units × registers / period)
    against delivered, counted by source timestamp in a window after the rate settled, so skipped
    polls show; CPU per 1 000 frames of the gateway, simulator, Mosquitto and subscriber by PID; RSS;
    load average; ≥ 2 fresh runs, min and median. Workloads: the issue-19 reference point (10 units
    × 360 registers at 100 ms = 36 000 frames/s), the max-rate run (5 simulators on CPU 1, gateway and
    broker on CPU 0: 180 000 frames/s offered), and RSS at 1 000 and 10 000 tags.
Zero loss = the subscriber saw every seq exactly in the published range (duplicates counted apart).

    .venv/bin/python tools/bench/bench_e2e.py --out build/bench [--quick] [--runs N] [--parts gateway]
    .venv/bin/python tools/bench/bench_e2e.py --out build/bench --parts memory --runs 1   # RSS only, ~1 min

Full run 3.3 min here (uplink path ~1 min, simulator-driven ~2.3 min); --quick about 1.5 min.
writes build/bench/e2e.json and build/bench/e2e.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_gateway.bus import open_bus_and_wal
from edge_gateway.config.model import Backoff, BusCfg, Connector, GatewayCfg, WalCfg
from edge_gateway.core.frame import GOOD, Frame, bad
from edge_gateway.delivery.batcher import Batcher
from edge_gateway.delivery.codec import Compressor, join_batch
from edge_gateway.delivery.runner import Runner
from edge_gateway.testkit import LOOPBACK, Mosquitto, stop_pid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_gateway import Timing, Workload, run
from procstat import loadavg, spread

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def connector(port: int, batch: int, compression: str = "zstd") -> Connector:
    return Connector(
        id="bench",
        kind="mqtt5",
        scheme="tcp",
        host=LOOPBACK,
        port=port,
        client_id="edge-bench",
        tenant="bench",
        device="gw",
        qos=2,
        batch=batch,
        max_interval=0.2,
        compression=compression,  # type: ignore[arg-type]
        backoff=Backoff(0.1, 1.0),
    )


def start_consumer(port: int, count: int, topic: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PY, "-m", "tests.consumer", "--port", str(port), "--count", str(count), "--quiet",
         "--topic", topic],
        cwd=ROOT / "app",  # the reference consumer is test code (app/tests/consumer.py), not in the package
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if '"subscribed"' not in line:
        stop_pid(proc)  # type: ignore[arg-type]
        raise RuntimeError(f"consumer did not subscribe: {line!r}")
    return proc


def finish_consumer(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, 2)  # SIGINT: the consumer prints what it has
        out, _ = proc.communicate(timeout=10)
    lines = [x for x in out.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# -- 1. the uplink path at full speed ------------------------------------------------------------------------


def uplink_path(n: int, batch: int, window: int, work: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir=work / f"mosq-{batch}").start()
    consumer = start_consumer(broker.port, n, "/edge/bench/gw/batch")
    wal_dir = work / f"wal-{batch}"
    bus, wal, writer = open_bus_and_wal(
        GatewayCfg(
            bus=BusCfg(capacity=65536),
            wal=WalCfg(dir=str(wal_dir), flush_ms=100, max_bytes=4 << 30),
        )
    )
    if not writer.is_alive():
        writer.start()
    up = Runner(
        connector(broker.port, batch),
        wal.cursor("bench"),
        record=bus.publish,
        window=window,
    )
    writer.add_listener(up.wake)
    up.start()
    deadline = time.monotonic() + 10
    while not up.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    tags = [f"plant.line{i % 8}.dev{i % 64:02d}.value{i % 5}" for i in range(1000)]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    sent = 0
    stalls = 0
    while (
        sent < n
    ):  # the producer: what line threads do, at full speed, honouring Pause
        if bus.paused:
            stalls += 1
            time.sleep(0.001)
            continue
        k = min(1000, n - sent)
        ts = int(time.time() * 1000)
        chunk = [
            Frame(0, ts, tags[(sent + i) % 1000], (sent + i) * 0.25) for i in range(k)
        ]
        sent += bus.publish(chunk)
    t_offered = time.time() - t0
    summary = finish_consumer(consumer, timeout=max(60.0, n / 5000))
    acked_at = time.time()
    while up.cursor.acked < n and time.time() - acked_at < 30:
        time.sleep(0.01)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = up.stats()
    up.stop()
    writer.stop()
    broker.stop()
    shutil.rmtree(wal_dir, ignore_errors=True)
    last = summary.get("last_new_frame_at") or time.time()
    seconds = last - t0
    got = summary.get("frames", 0)
    return {
        "frames": n,
        "batch": batch,
        "window": window,
        "qos": 2,
        "compression": "zstd",
        "delivered": got,
        "lost": n - got,
        "duplicates": summary.get("duplicates"),
        "seconds": round(seconds, 3),
        "frames_per_s": round(got / seconds) if seconds > 0 else None,
        "offered_frames_per_s": round(n / t_offered),
        "producer_pauses": stalls,
        "gateway_cpu_s": round(
            cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2
        ),
        "zstd_ratio_on_wire": stats["compression_ratio"],
        "mqtt_payload_bytes": summary.get("payload_bytes"),
    }


# -- 2. zstd ratio on realistic batches ----------------------------------------------------------------------


def realistic_frames(n: int, seed: int = 7) -> list[Frame]:
    """A plant as the gateway sees it: 200 tags on 8 units polled every second, mostly floats drifting
    a little between polls, some counters, booleans and status words, the odd bad read."""
    rnd = random.Random(seed)
    tags: list[tuple[str, str, float]] = []
    for unit in range(8):
        for i in range(25):
            kind = ("float", "float", "float", "counter", "bool", "word")[i % 6]
            name = (
                "temp_c",
                "pressure_bar",
                "flow_m3h",
                "energy_wh",
                "running",
                "status",
            )[i % 6]
            tags.append(
                (f"site1.line{unit}.dev{i:02d}.{name}", kind, rnd.uniform(0, 500))
            )
    state = [t[2] for t in tags]
    out: list[Frame] = []
    ts = 1_763_800_000_000
    seq = 1
    while len(out) < n:
        for i, (tag, kind, _) in enumerate(tags):
            if kind == "float":
                state[i] += rnd.gauss(0, 0.3)
                value: Any = round(state[i], 2)
            elif kind == "counter":
                state[i] += rnd.randint(0, 40)
                value = int(state[i])
            elif kind == "bool":
                value = rnd.random() < 0.7
            else:
                value = rnd.choice((0, 0, 0, 1, 4, 0x8000))
            q = GOOD if rnd.random() > 0.002 else bad("timeout")
            out.append(Frame(seq, ts + i * 3, tag, None if q != GOOD else value, q))
            seq += 1
        ts += 1000
    return out[:n]


def zstd_ratio(batch: int, frames: list[Frame]) -> dict[str, Any]:
    b = Batcher(batch, 1 << 20, 3600.0)
    batches = b.add(frames)
    z = Compressor(True)
    raw = packed = 0
    t = time.perf_counter()
    for x in batches:
        r = join_batch(x.parts)
        raw += len(r)
        packed += len(z(r))
    dt = time.perf_counter() - t
    return {
        "batch": batch,
        "batches": len(batches),
        "raw_bytes_per_frame": round(raw / len(frames), 1),
        "zstd_bytes_per_frame": round(packed / len(frames), 1),
        "ratio": round(raw / packed, 2),
        "encode_compress_us_per_batch": round(1e6 * dt / len(batches), 1),
    }


# -- 3. the real gateway on the simulator: offered vs delivered, CPU by PID, resident memory -------------
# The instruments are in e2e_gateway.py (processes, window, counters) and procstat.py (/proc).

# 2 cores: the simulators (and the subscriber, which is the cloud's cost) on CPU 1, the gateway and the
# broker on CPU 0, so the gateway gets one core of its own minus Mosquitto's ~1 %.
MAX_RATE_AFFINITY = {"gateway": {0}, "broker": {0}, "simulator": {1}, "subscriber": {1}}


RSS_TARGET_MIB = {
    "memory-1k": 35,
    "memory-10k": 50,
}  # SPEC §9: resident memory at 1 000 and 10 000 tags


def gateway_workloads(
    quick: bool, max_sims: int, memory_only: bool = False
) -> list[tuple[Workload, int]]:
    """(workload, runs): the issue's reference point, the max-rate run, and the memory points
    (`memory_only`: just those, for `--parts memory`)."""
    reference = Workload("reference", units=10, regs=360, period_s=0.1)
    out = [] if memory_only else [(reference, 2)]
    if os.cpu_count() and os.cpu_count() >= 2 and not quick and not memory_only:  # type: ignore[operator]
        out.append(
            (
                Workload(
                    "max-rate", 10, 360, 0.1, sims=max_sims, affinity=MAX_RATE_AFFINITY
                ),
                2,
            )
        )
    out.append((Workload("memory-1k", units=10, regs=100, period_s=1.0), 1))
    if not quick:
        out.append((Workload("memory-10k", units=40, regs=250, period_s=1.0), 1))
    return out


def gateway_summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """min and median over the runs of one workload (CPU per 1 000 frames of each process; several
    simulator processes are summed: together they are what offered the load)."""

    def per_process(r: dict[str, Any]) -> dict[str, float]:
        cpu = r["cpu_ms_per_1000_frames"]
        out = {k: v for k, v in cpu.items() if not k.startswith("simulator")}
        sims = [
            v for k, v in cpu.items() if k.startswith("simulator") and v is not None
        ]
        out["simulator"] = round(sum(sims), 2) if sims else None
        return out

    per = [per_process(r) for r in runs]
    return {
        "workload": name,
        "runs": len(runs),
        "delivered_per_s": spread([r["delivered_per_s"] for r in runs]),
        "cpu_ms_per_1000_frames": {p: spread([x.get(p) for x in per]) for p in per[0]},
        "gateway_rss_mib": spread([r["gateway_rss_mib"] for r in runs]),
    }


# -- report ---------------------------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    out = ["## End to end (gateway → Mosquitto → subscriber, QoS2, zstd)", ""]
    out += [
        "Uplink path: synthetic frames on the FrameBus of an in-process pipeline (bus → WAL with fsync every",
        "100 ms → MQTT 5 thread → Mosquitto → subscriber process). Target ≥ 50 000 frames/s, zero loss.",
        "",
        "| batch | window | frames | delivered/s | lost | dups | gateway CPU s | zstd ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for u in r["uplink_path"]:
        out.append(
            f"| {u['batch']} | {u['window']} | {u['frames']} | **{u['frames_per_s']}** | {u['lost']} | "
            f"{u['duplicates']} | {u['gateway_cpu_s']} | {u['zstd_ratio_on_wire']} |"
        )
    out += [
        "",
        "zstd (the connector's level, delivery.codec.Compressor) on realistic batches (8 units × 25 tags, drifting floats, counters, flags):",
        "",
    ]
    out += [
        "| batch | JSON bytes/frame | zstd bytes/frame | ratio | µs/batch |",
        "|---:|---:|---:|---:|---:|",
    ]
    for z in r["zstd"]:
        out.append(
            f"| {z['batch']} | {z['raw_bytes_per_frame']} | {z['zstd_bytes_per_frame']} | **{z['ratio']}×** | "
            f"{z['encode_compress_us_per_batch']} |"
        )
    if r.get("gateway"):
        out.append(gateway_markdown(r))
    return "\n".join(out) + "\n"


def _ms(x: dict[str, Any] | None, fmt: str = ".2f") -> str:
    """median (min) of a spread() when there were several runs."""
    if not x or x.get("median") is None:
        return "–"
    med, lo = format(x["median"], fmt), format(x["min"], fmt)
    return f"{med} (min {lo})" if len(x["runs"]) > 1 else med


def gateway_markdown(r: dict[str, Any]) -> str:
    out = [
        "",
        "### The real `edge-gateway` on the PLC simulator (Modbus/TCP → fsync'd WAL → Mosquitto QoS 2, zstd)",
        "",
        "Each run starts everything afresh; the window opens once two successive 1 s delivered rates agree",
        "within 5 % (warm-up excluded) and counts frames by their *source timestamp*, so a poll that was never",
        "made is a missing frame. `polls made` = ok Modbus transactions / reads per unit in the window (the",
        "gateway's /metrics); `arrived/s` = everything received during the window (≠ delivered when a backlog",
        "grows); seq holes = seqs never seen between the window's lowest and highest (loss after commit).",
        "CPU = utime + stime from /proc/PID/stat of each process over the window, per 1 000 delivered frames.",
        f"Command: `{r.get('command', 'tools/bench/bench_e2e.py')}`.",
        "",
        (
            "| workload | run | offered/s | delivered/s | arrived/s | polls made/expected | paused skips |"
            " seq holes | dups | max tag gap ms | lag ms mean/max | RSS MiB | load avg |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in r["gateway"]:
        if "error" in g:
            out.append(
                f"| {g['workload']} | {g.get('run', '')} | failed: {g['error']} |||||||||||"
            )
            continue
        out.append(
            f"| {g['workload']} ({g['units']}×{g['tags'] // g['units']} @ {g['polling_ms']} ms"
            f"{', ' + str(g['simulators']) + ' simulators' if g['simulators'] > 1 else ''}) | {g['run']} | "
            f"{g['offered_per_s']:,} | **{g['delivered_per_s']:,}** ({g['delivered_share']:.1%}) | "
            f"{g['arrived_per_s']:,} | {g['polls_made']:.0f}/{g['polls_expected']} | "
            f"{g['polls_skipped_paused']:.0f} | {g['seq_holes']} | {g['duplicates']} | {g['tag_gap_max_ms']} | "
            f"{g['lag_ms_mean']}/{g['lag_ms_max']} | {g['gateway_rss_mib']} | "
            f"{' '.join(str(x) for x in g['loadavg'])} |"
        )
    out += [
        "",
        "CPU ms per 1 000 delivered frames, by process (median of the runs, min in brackets):",
        "",
        "| workload | runs | delivered/s | gateway | simulator(s), summed | Mosquitto | subscriber | gateway RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r.get("gateway_summary", []):
        cpu = s["cpu_ms_per_1000_frames"]
        sim = _ms(cpu.get("simulator"))
        out.append(
            f"| {s['workload']} | {s['runs']} | {_ms(s['delivered_per_s'], ',.0f')} | **{_ms(cpu.get('gateway'))}** | "
            f"{sim} | {_ms(cpu.get('broker'))} | {_ms(cpu.get('subscriber'))} | {_ms(s['gateway_rss_mib'], '.1f')} |"
        )
    for s in r.get("gateway_summary", []):
        rss, target = s["gateway_rss_mib"]["max"], RSS_TARGET_MIB.get(s["workload"])
        if target is not None and rss is not None:
            out.append(
                f"\n{s['workload']}: gateway RSS {rss:.1f} MiB (max of the runs), target ≤ {target} MiB "
                f"(SPEC §9): {'met' if rss <= target else 'NOT met'}."
            )
    pinned = [g for g in r["gateway"] if g.get("affinity")]
    if pinned:
        aff = pinned[0]["affinity"]
        out += [
            "",
            "max-rate: pinned with `os.sched_setaffinity` on every thread of each PID: "
            + ", ".join(f"{k} on CPU {','.join(map(str, v))}" for k, v in aff.items())
            + ". Target: ≥ 150 000 frames/s delivered. CPU % of one core in the window: "
            + "; ".join(
                f"run {g['run']}: "
                + ", ".join(f"{k} {v}" for k, v in g["cpu_pct_one_core"].items())
                for g in pinned
            )
            + ".",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="build/bench")
    p.add_argument("--quick", action="store_true", help="fewer frames, shorter runs")
    p.add_argument(
        "--runs",
        type=int,
        default=2,
        help="runs per simulator-driven workload (≥ 2: min, median)",
    )
    p.add_argument(
        "--max-sims",
        type=int,
        default=5,
        help="simulator processes of the max-rate run (36 k/s each)",
    )
    p.add_argument(
        "--parts",
        default="uplink,gateway",
        help="uplink (in-process path + zstd), gateway (simulator), memory (only the gateway's memory-1k"
        " and memory-10k runs)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=out))
    n = (
        100_000 if args.quick else 2_000_000
    )  # the full run sustains the rate for about 15 s
    result: dict[str, Any] = {
        "uplink_path": [],
        "zstd": [],
        "gateway": [],
        "gateway_summary": [],
    }
    result["command"] = "tools/bench/bench_e2e.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    try:
        for batch, window in ((32, 32), (256, 16)) if "uplink" in args.parts else ():
            r = uplink_path(n, batch, window, work)
            print(json.dumps(r), flush=True)
            result["uplink_path"].append(r)
        frames = realistic_frames(20_000)
        for batch in (32, 256) if "uplink" in args.parts else ():
            result["zstd"].append(zstd_ratio(batch, frames))
        print(json.dumps(result["zstd"]), flush=True)
        timing = Timing(warm_min=3.0, window=5.0) if args.quick else Timing(window=10.0)
        for w, runs in (
            gateway_workloads(
                args.quick, args.max_sims, memory_only="gateway" not in args.parts
            )
            if "gateway" in args.parts or "memory" in args.parts
            else ()
        ):
            done = []
            for i in range(
                1, max(runs, args.runs if w.name != "memory-10k" else 1) + 1
            ):
                try:
                    g = {"run": i, **run(w, timing, work, i)}
                    done.append(g)
                except (RuntimeError, OSError) as e:
                    g = {
                        "workload": w.name,
                        "run": i,
                        "error": str(e),
                        "loadavg": loadavg(),
                    }
                print(json.dumps(g), flush=True)
                result["gateway"].append(g)
            if done:
                result["gateway_summary"].append(gateway_summary(w.name, done))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "e2e.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
