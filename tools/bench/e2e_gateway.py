"""The real `edge-gateway` process polling PLC simulators (tools/plcsim) over Modbus/TCP, through its
fsync'd WAL and Mosquitto (QoS 2, zstd) to a subscriber process: offered against delivered, CPU per
1 000 frames of every process by PID, the gateway's RSS, over a window taken after the rate settled.

Offered = units × registers / polling period. Delivered = frames whose *source timestamp* lies in the
window and that reached the subscriber, so a poll the gateway never made (overrun, bus pause) is a
missing frame and not just a smaller rate; the gateway's own /metrics (modbus_pdu_total ok,
modbus_skipped_cycles_total) say how many polls it made and skipped in the same window, and the
subscriber counts gaps in each tag's timestamps and seqs never seen (loss after commit).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid
from procstat import CpuMeter, loadavg, pin, rss_mib

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
REGS_PER_READ = 125


@dataclass(frozen=True)
class Workload:
    name: str
    units: int  # per simulator
    regs: int  # holding registers per unit, all polled
    period_s: float
    sims: int = 1  # simulator processes, each one gateway endpoint (one line thread)
    # process → CPUs it may run on (gateway, broker, simulator, subscriber); empty = not pinned
    affinity: dict[str, set[int]] = field(default_factory=dict)

    @property
    def tags(self) -> int:
        return self.sims * self.units * self.regs

    @property
    def offered_per_s(self) -> float:
        return self.tags / self.period_s

    @property
    def polls_per_s(self) -> float:  # unit cycles
        return self.sims * self.units / self.period_s


@dataclass(frozen=True)
class Timing:
    warm_min: float = (
        4.0  # s after the first frame before the rate may count as settled
    )
    warm_max: float = (
        20.0  # give up waiting for a settled rate (reported as settled: false)
    )
    window: float = 10.0
    drain: float = 2.0  # after the window: frames stamped in it still on their way


class Simulator:
    """One plcsim process serving `units` units × `regs` counters (holding registers)."""

    def __init__(self, work: Path, units: int, regs: int, index: int) -> None:
        points = [
            {
                "table": "holding",
                "addr": a,
                "type": "uint16",
                "value": {"counter": {"start": a, "per_s": 1}},
            }
            for a in range(regs)
        ]
        profile = work / f"profile-{index}.yml"
        profile.write_text(
            yaml.safe_dump(
                {"units": [{"unit": u, "points": points} for u in range(1, units + 1)]}
            )
        )
        self.proc = subprocess.Popen(
            [PY, str(ROOT / "tools/plcsim/plcsim.py"), str(profile), "--tcp", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            stop_pid(self.proc)  # type: ignore[arg-type]
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.port = int(dict(kv.split("=") for kv in line.split()[1:])["tcp"])


def gateway_config(
    d: Path, w: Workload, sim_ports: list[int], mqtt_port: int, metrics_port: int
) -> Path:
    """A config dir: one endpoint per simulator, every unit a driver, every register a tag."""
    d = d.resolve()  # the gateway resolves relative paths against the config dir
    d.mkdir(parents=True, exist_ok=True)
    endpoints = {
        f"plc{s}": {
            "scheme": "tcp",
            "host": LOOPBACK,
            "port": port,
            "opts": {"timeout": "1000ms"},
        }
        for s, port in enumerate(sim_ports)
    }
    drivers = {
        f"s{s}u{u}": {
            "endpoint_id": f"plc{s}",
            "proto": "modbus",
            "cfg": {
                "unit_id": u,
                "polling": f"{round(w.period_s * 1000)}ms",
                "max_regs_per_req": REGS_PER_READ,
            },
        }
        for s in range(w.sims)
        for u in range(1, w.units + 1)
    }
    variables = [
        {
            "tag": f"{drv}.r{a}",
            "driver_id": drv,
            "address": {"type": "holding", "addr": a},
            "datatype": "uint16",
        }
        for drv in drivers
        for a in range(w.regs)
    ]
    connector = {
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
    gateway = {
        "wal": {"dir": str(d / "wal"), "flush_ms": 100, "max_bytes": "1GiB"},
        "metrics": {"listen": f"{LOOPBACK}:{metrics_port}"},
        "control": {"socket": str(d / "control.sock")},
    }
    for name, doc in (
        ("endpoints.yml", endpoints),
        ("drivers.yml", drivers),
        ("variables.yml", variables),
        ("connector.yml", connector),
        ("gateway.yml", gateway),
    ):
        (d / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return d


_SAMPLE = re.compile(
    r"^(modbus_pdu_total|modbus_skipped_cycles_total)\{([^}]*)\} ([0-9.e+]+)$",
    re.MULTILINE,
)


def poll_counters(port: int) -> dict[str, float]:
    """Polls made (ok transactions) and cycles skipped so far, summed over drivers, from /metrics."""
    try:
        text = (
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5)
            .read()
            .decode()
        )
    except OSError:
        return {"pdu_ok": math.nan, "pdu_failed": math.nan, "skipped": math.nan}
    out = {"pdu_ok": 0.0, "pdu_failed": 0.0, "skipped": 0.0}
    for name, labels, value in _SAMPLE.findall(text):
        if name == "modbus_skipped_cycles_total":
            out["skipped"] += float(value)
        elif 'result="ok"' in labels:
            out["pdu_ok"] += float(value)
        else:
            out["pdu_failed"] += float(value)
    return out


class Subscriber:
    """tools/bench/e2e_subscriber.py, driven line by line over its stdin/stdout."""

    def __init__(self, port: int, period_s: float) -> None:
        self.proc = subprocess.Popen(
            [PY, str(Path(__file__).with_name("e2e_subscriber.py")), "--port", str(port),
             "--topic", "/edge/bench/gw/batch", "--period", str(period_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        if '"subscribed"' not in self.ask(None):
            raise RuntimeError("subscriber did not subscribe")

    def ask(self, cmd: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def frames(self) -> int:
        return int(json.loads(self.ask("rate"))["frames"])


def _settle(
    sub: Subscriber, gw: subprocess.Popen[bytes], w: Workload, t: Timing
) -> dict[str, Any]:
    """Wait for the first frame, then until two successive 1 s rates agree within 5 % of the offered
    rate of each other (at least warm_min, at most warm_max): connect, first polls, WAL segment creation excluded."""
    deadline = time.monotonic() + 60
    while sub.frames() == 0:
        if gw.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gw.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("nothing delivered in 60 s")
        time.sleep(0.2)
    first = time.monotonic()
    rates: list[float] = []
    n0, t0 = sub.frames(), time.monotonic()
    while True:
        time.sleep(1.0)
        n1, t1 = sub.frames(), time.monotonic()
        rates.append((n1 - n0) / (t1 - t0))
        n0, t0 = n1, t1
        waited = t1 - first
        steady = (
            len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= 0.05 * w.offered_per_s
        )
        if (steady and waited >= t.warm_min) or waited >= t.warm_max:
            return {
                "warm_up_s": round(waited, 1),
                "settled": steady,
                "rate_at_start": round(rates[-1]),
            }


def run(w: Workload, t: Timing, work: Path, index: int) -> dict[str, Any]:
    """One fresh run: broker, simulators, subscriber, gateway started, measured, ended by PID."""
    d = work / f"{w.name}-{index}"
    d.mkdir(parents=True)
    broker = Mosquitto(workdir=d / "broker").start()
    sims: list[Simulator] = []
    sub: Subscriber | None = None
    gw: subprocess.Popen[bytes] | None = None
    log = open(d / "gateway.log", "wb")  # noqa: SIM115 - the child writes it
    try:
        for s in range(w.sims):
            sims.append(Simulator(d, w.units, w.regs, s))
        sub = Subscriber(broker.port, w.period_s)
        metrics_port = free_port()
        cfg = gateway_config(
            d / "cfg", w, [s.port for s in sims], broker.port, metrics_port
        )
        gw = subprocess.Popen(
            [str(Path(PY).parent / "edge-gateway"), "run", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        assert broker.proc is not None
        pids = {
            "gateway": gw.pid,
            "broker": broker.proc.pid,
            "subscriber": sub.proc.pid,
        }
        pids.update(
            {
                f"simulator{i if w.sims > 1 else ''}": s.proc.pid
                for i, s in enumerate(sims)
            }
        )

        def pin_all() -> list[str]:
            why = []
            for name, pid in pids.items():
                role = "simulator" if name.startswith("simulator") else name
                if msg := pin(pid, w.affinity.get(role)):
                    why.append(msg)
            return why

        pin_all()
        warm = _settle(sub, gw, w, t)
        pin_problems = (
            pin_all()
        )  # threads started since inherit, but say so if pinning failed
        t0_ms = int(time.time() * 1000) + 300
        t1_ms = t0_ms + int(t.window * 1000)
        sub.ask(f"window {t0_ms} {t1_ms}")
        time.sleep(max(0.0, t0_ms / 1000 - time.time()))
        meter = CpuMeter(pids)
        meter.start()
        arrived0 = sub.frames()
        polls0 = poll_counters(metrics_port)
        rss: list[float] = []
        while time.time() < t1_ms / 1000:
            rss.append(rss_mib(gw.pid))
            time.sleep(min(1.0, max(0.0, t1_ms / 1000 - time.time())))
        cpu = meter.stop()
        got_arrived = sub.frames() - arrived0
        polls1 = poll_counters(metrics_port)
        load = loadavg()
        time.sleep(t.drain)
        got = json.loads(sub.ask("report"))
        alive = gw.poll() is None
    except RuntimeError as e:  # say why: the gateway's last words, or that it died
        log.flush()
        tail = (d / "gateway.log").read_text(errors="replace").strip().splitlines()[-2:]
        state = "running" if gw is not None and gw.poll() is None else "exited"
        raise RuntimeError(f"{e} (gateway {state}; its log ends: {tail})") from e
    finally:
        if gw is not None:
            stop_pid(gw)  # type: ignore[arg-type]
        log.close()
        if sub is not None:
            stop_pid(sub.proc)  # type: ignore[arg-type]
        for s in sims:
            stop_pid(s.proc)  # type: ignore[arg-type]
        broker.stop()
    got["arrived"] = got_arrived
    return _figures(
        w, t, warm, got, cpu, polls0, polls1, rss, load, alive, pin_problems
    )


def _figures(
    w: Workload,
    t: Timing,
    warm: dict[str, Any],
    got: dict[str, Any],
    cpu: dict[str, float],
    polls0: dict[str, float],
    polls1: dict[str, float],
    rss: list[float],
    load: list[float],
    alive: bool,
    pin_problems: list[str],
) -> dict[str, Any]:
    frames = got["frames"]
    offered = w.offered_per_s * t.window
    reads = math.ceil(w.regs / REGS_PER_READ)
    polls_made = (polls1["pdu_ok"] - polls0["pdu_ok"]) / reads
    polls_expected = w.polls_per_s * t.window
    per_k = {n: round(1e6 * s / frames, 2) if frames else None for n, s in cpu.items()}
    return {
        "workload": w.name,
        "tags": w.tags,
        "simulators": w.sims,
        "units": w.sims * w.units,
        "polling_ms": round(w.period_s * 1000),
        "offered_per_s": round(w.offered_per_s),
        "delivered_per_s": round(frames / t.window),
        "delivered_share": round(frames / offered, 4),
        # frames that arrived during the window whatever their timestamp: the throughput, which
        # differs from delivered_per_s when a backlog builds up or drains
        "arrived_per_s": round(got["arrived"] / t.window),
        "lag_ms_mean": got["lag_ms_mean"],
        "lag_ms_max": got["lag_ms_max"],
        "frames_missing": round(offered - frames),
        "polls_expected": round(polls_expected),
        "polls_made": round(polls_made, 1),
        "polls_skipped_paused": polls1["skipped"] - polls0["skipped"],
        "pdu_failed": polls1["pdu_failed"] - polls0["pdu_failed"],
        "tag_gaps_2_periods": got["long_gaps"],
        "tag_gap_max_ms": got["max_gap_ms"],
        "per_tag_frames": [got["per_tag_min"], got["per_tag_max"]],
        "tags_seen": got["tags"],
        "seq_holes": got["seq_holes"],
        "duplicates": got["duplicates"],
        "cpu_s": {n: round(s, 3) for n, s in cpu.items()},
        "cpu_ms_per_1000_frames": per_k,
        "cpu_pct_one_core": {n: round(100 * s / t.window, 1) for n, s in cpu.items()},
        "gateway_rss_mib": round(max(rss), 1) if rss else None,
        "window_s": t.window,
        **warm,
        "loadavg": load,
        "affinity": {k: sorted(v) for k, v in w.affinity.items()},
        "pin_problems": pin_problems,
        "gateway_alive": alive,
    }
