#!/usr/bin/env python3
"""Peer comparison: edge-gateway and ThingsBoard IoT Gateway on the same simulator and broker.

    .venv/bin/python tools/bench/bench_peers.py --out build/bench [--quick]

writes build/bench/peers.json and build/bench/peers.md (the work is in tools/peers/compare.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import args, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import compare


def markdown(fig: dict, quick: bool) -> str:
    out = [
        "## Peer comparison (same simulator, same Mosquitto, same machine)",
        "",
        (
            f"Workload: {fig['workload']}; each gateway polls every register at the given period and publishes "
            "every value (edge-gateway: QoS 2, zstd batches, WAL with fsync; ThingsBoard: QoS 1, memory storage). "
            f"Command: `tools/bench/bench_peers.py{' --quick' if quick else ''}`."
        ),
        "",
    ]
    if "thingsboard" in fig:
        out += [f"ThingsBoard IoT Gateway: {fig['thingsboard']}", ""]
    out += [
        "| gateway | poll | offered /s | delivered /s | delivered share | CPU % of one core | RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in fig["runs"]:
        if "error" in r:
            out.append(
                f"| {r['gateway']} | {r['period_ms']} ms | | failed: {r['error']} | | | |"
            )
            continue
        out.append(
            f"| {r['gateway']} | {r['period_ms']} ms | {r['offered_per_s']:,} | {r['delivered_per_s']:,} | "
            f"{r['delivered_share']:.1%} | {r['cpu_pct_one_core']} | {r['rss_mib']} |"
        )
    out += [
        "",
        (
            "Broker outage at the 1 s period (poll cycles of the outage window that never reached the subscriber; "
            "one cycle = one device's 360 values; ±1 cycle per device at the window edges is not counted):"
        ),
        "",
        "| gateway | outage | cycles expected | cycles delivered | cycles lost | seq gaps |",
        "|---|---|---|---|---|---|",
    ]
    for r in fig.get("outage", []):
        if "error" in r:
            out.append(f"| {r['gateway']} | | | failed: {r['error']} | | |")
            continue
        out.append(
            f"| {r['gateway']} | {r['outage_s']:.0f} s | {r['outage_cycles_expected']} | "
            f"{r['outage_cycles_delivered']} | {r['outage_cycles_lost']} | {r.get('outage_seq_gaps', 'n/a')} |"
        )
    return "\n".join(out)


def main() -> None:
    a = args("edge-gateway vs ThingsBoard IoT Gateway on the same work")
    fig = compare.main(["--quick"] if a.quick else [])
    write(a.out, "peers", fig, markdown(fig, a.quick))


if __name__ == "__main__":
    main()
