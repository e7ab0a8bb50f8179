#!/usr/bin/env python3
"""End-to-end benchmark: frames/s through Mosquitto with QoS2 + zstd and zero loss, the zstd ratio on
realistic batches, and the gateway's resident memory with 1 000 and 10 000 tags (SPEC §9).

Two throughput figures, because they measure different things:
  * uplink path: synthetic frames published onto the FrameBus of an in-process pipeline
    (bus → WAL writer with fsync → WAL → MQTT 5 thread → Mosquitto → a subscriber in another process).
    This is the capacity of everything after acquisition; the target (≥ 50 000 frames/s) is for it.
  * simulator-driven: the real `edge-gateway` process polling the PLC simulator over Modbus/TCP with
    many tags, through the same path to the subscriber: what one simulator actually produces.
Zero loss = the subscriber saw every seq exactly in the published range (duplicates counted apart).

    .venv/bin/python tools/bench/bench_e2e.py --out build/bench [--quick]
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

import yaml
from edge_gateway.bus import open_bus_and_wal
from edge_gateway.config.model import Backoff, BusCfg, Connector, GatewayCfg, WalCfg
from edge_gateway.core.frame import GOOD, Frame, bad
from edge_gateway.delivery.batcher import Batcher
from edge_gateway.delivery.codec import Compressor, join_batch
from edge_gateway.delivery.runner import Runner
from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid, wait_port

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


# -- 3. the real gateway on the simulator: frames/s and resident memory -----------------------------------


def gateway_config(
    d: Path, tags: int, units: int, sim_port: int, mqtt_port: int, polling: str
) -> Path:
    """A config dir with `tags` holding registers spread over `units` units of one Modbus/TCP PLC."""
    d.mkdir(parents=True, exist_ok=True)
    per_unit = tags // units
    (d / "endpoints.yml").write_text(
        yaml.safe_dump(
            {
                "plc": {
                    "scheme": "tcp",
                    "host": LOOPBACK,
                    "port": sim_port,
                    "opts": {"timeout": "1000ms"},
                }
            }
        )
    )
    drivers = {
        f"u{u}": {
            "kind": "static",
            "endpoint_id": "plc",
            "proto": "modbus",
            "cfg": {"unit_id": u + 1, "polling": polling, "max_regs_per_req": 125},
        }
        for u in range(units)
    }
    (d / "drivers.yml").write_text(yaml.safe_dump(drivers))
    variables = [
        {
            "tag": f"u{u}.r{a}",
            "driver_id": f"u{u}",
            "address": {"type": "holding", "addr": a},
            "datatype": "uint16",
        }
        for u in range(units)
        for a in range(per_unit)
    ]
    (d / "variables.yml").write_text(yaml.safe_dump(variables))
    (d / "connector.yml").write_text(
        yaml.safe_dump(
            {
                "cloud": {
                    "kind": "mqtt5",
                    "endpoint": f"tcp://{LOOPBACK}:{mqtt_port}",
                    "tenant": "bench",
                    "device": "gw",
                    "qos": 2,
                    "compression": "zstd",
                    "batch": 256,
                    "max_interval": "200ms",
                }
            }
        )
    )
    (d / "gateway.yml").write_text(
        yaml.safe_dump(
            {
                "wal": {"dir": str(d / "wal"), "flush_ms": 100, "max_bytes": "1GiB"},
                "metrics": {"listen": f"{LOOPBACK}:{free_port()}"},
                "control": {"socket": str(d / "control.sock")},
            }
        )
    )
    return d


def start_simulator(
    units: int, regs: int, work: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """The project's PLC simulator (tools/plcsim) serving `units` units × `regs` holding registers."""
    port = free_port()
    profile = work / f"profile-{units}x{regs}.yml"
    points = [
        {
            "table": "holding",
            "addr": a,
            "type": "uint16",
            "value": {"counter": {"start": a, "per_s": 1}},
        }
        for a in range(regs)
    ]
    profile.write_text(
        yaml.safe_dump(
            {"units": [{"unit": u, "points": points} for u in range(1, units + 1)]}
        )
    )
    proc = subprocess.Popen(
        [
            PY,
            str(ROOT / "tools" / "plcsim" / "plcsim.py"),
            str(profile),
            "--tcp",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, 20)
    return proc, port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gateway_run(
    tags: int, units: int, polling: str, seconds: float, work: Path
) -> dict[str, Any]:
    sim, sim_port = start_simulator(units, tags // units, work)
    broker = Mosquitto(workdir=work / f"mosq-gw-{tags}").start()
    cfg = gateway_config(
        work / f"cfg-{tags}", tags, units, sim_port, broker.port, polling
    )
    consumer = start_consumer(broker.port, 10**12, "/edge/bench/gw/batch")
    gw = subprocess.Popen(
        [str(Path(PY).parent / "edge-gateway"), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t_start = time.monotonic()
        while not (cfg / "control.sock").exists() and time.monotonic() - t_start < 20:
            time.sleep(0.02)
        time.sleep(min(3.0, seconds / 4))  # warm-up: connect, first polls
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            samples.append(rss_kib(gw.pid))
            time.sleep(0.5)
        rss = max(samples) if samples else rss_kib(gw.pid)
    finally:
        stop_pid(gw)  # type: ignore[arg-type]
        os.kill(consumer.pid, 2)
        summary = finish_consumer(consumer, 10)
        stop_pid(sim)
        broker.stop()
    first, last = summary.get("first_frame_at"), summary.get("last_new_frame_at")
    frames = summary.get("frames", 0)
    rate = frames / (last - first) if first and last and last > first else None
    return {
        "tags": tags,
        "units": units,
        "polling": polling,
        "rss_mib": round(rss / 1024, 1),
        "delivered": frames,
        "missing_in_range": summary.get("missing_in_range"),
        "duplicates": summary.get("duplicates"),
        "frames_per_s": round(rate) if rate else None,
        "offered_frames_per_s": round(tags / _seconds(polling)),
    }


def _seconds(d: str) -> float:
    from edge_gateway.config.units import parse_duration

    return parse_duration(d)


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
        "zstd (level 3) on realistic batches (8 units × 25 tags, drifting floats, counters, flags):",
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
        out += [
            "",
            "The real `edge-gateway` process polling the PLC simulator (Modbus/TCP, 125 registers per request):",
            "",
            "| tags | units | polling | offered/s | delivered/s | missing | RSS MiB |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
        for g in r["gateway"]:
            out.append(
                f"| {g['tags']} | {g['units']} | {g['polling']} | {g['offered_frames_per_s']} | {g['frames_per_s']} |"
                f" {g['missing_in_range']} | **{g['rss_mib']}** |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="build/bench")
    p.add_argument("--quick", action="store_true", help="fewer frames, shorter runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=out))
    n = (
        100_000 if args.quick else 2_000_000
    )  # the full run sustains the rate for about 15 s
    result: dict[str, Any] = {"uplink_path": [], "zstd": [], "gateway": []}
    try:
        for batch, window in ((32, 32), (256, 16)):
            r = uplink_path(n, batch, window, work)
            print(json.dumps(r), flush=True)
            result["uplink_path"].append(r)
        frames = realistic_frames(20_000)
        for batch in (32, 256):
            result["zstd"].append(zstd_ratio(batch, frames))
        print(json.dumps(result["zstd"]), flush=True)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        runs = (
            ((1000, 10, "1s"), (10000, 40, "1s"))
            if not args.quick
            else ((1000, 10, "1s"),)
        )
        for tags, units, polling in runs:
            g = gateway_run(tags, units, polling, 6.0 if args.quick else 15.0, work)
            print(json.dumps(g), flush=True)
            result["gateway"].append(g)
        fast = gateway_run(2000, 16, "100ms", 6.0 if args.quick else 15.0, work)
        print(json.dumps(fast), flush=True)
        result["gateway"].append(fast)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "e2e.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
