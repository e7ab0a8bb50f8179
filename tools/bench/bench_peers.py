#!/usr/bin/env python3
"""Peer comparison: edge-gateway, ThingsBoard IoT Gateway and Node-RED on the same simulator and broker.

    .venv/bin/python tools/bench/bench_peers.py --out build/bench [--quick]

writes build/bench/peers.json, build/bench/peers.md and the chart build/bench/peers.svg (CPU per
1 000 datapoints and RSS against the offered rate; the work is in tools/peers/compare.py). A peer that
cannot be installed here (no PyPI, no npm registry, no node) is skipped with the reason.
Full run 12.5 min here (3 gateways × 4 periods, 2 runs at 100 ms, 2 broker outages); --quick about 5 min.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import args, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import compare

COLOURS = ["#2a6fdb", "#d1495b", "#2a9d4b", "#8e44ad"]


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (gateway, period): the median of its runs (and how many there were)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if "error" not in r:
            groups[(r["gateway"], r["period_ms"])].append(r)
    out = []
    for (gw, period), rs in groups.items():
        procs = rs[0]["cpu_ms_per_1000"].keys()
        out.append(
            {
                "gateway": gw,
                "period_ms": period,
                "runs": len(rs),
                "offered_per_s": rs[0]["offered_per_s"],
                "delivered_per_s": statistics.median(r["delivered_per_s"] for r in rs),
                "delivered_share": statistics.median(r["delivered_share"] for r in rs),
                "cpu_ms_per_1000": {
                    p: statistics.median(r["cpu_ms_per_1000"][p] or 0.0 for r in rs)
                    for p in procs
                },
                "cpu_ms_min": min(r["cpu_ms_per_1000"]["gateway"] or 0.0 for r in rs),
                "rss_mib": statistics.median(r["rss_mib"] for r in rs),
                "cpu_pct_one_core": statistics.median(
                    r["cpu_pct_one_core"] for r in rs
                ),
                "loadavg": [r["loadavg"][0] for r in rs],
            }
        )
    return out


def chart(rows: list[dict[str, Any]]) -> str:
    """Two panels drawn by hand (no plotting library): gateway CPU ms per 1 000 datapoints, and its
    RSS, against the offered rate (log scale), one line per gateway."""
    gateways = list(dict.fromkeys(r["gateway"] for r in rows))
    rates = sorted({r["offered_per_s"] for r in rows})
    pw, ph, ml, mt, gap = 330, 220, 55, 40, 70
    w, h = ml + 2 * pw + gap + 20, mt + ph + 50 + 18 * len(gateways)
    lo, hi = min(rates), max(rates)

    def x(rate: float, panel: int) -> float:
        span = (hi / lo) if hi > lo else 10.0
        frac = math.log(rate / lo) / math.log(span) if hi > lo else 0.5
        return ml + panel * (pw + gap) + 10 + frac * (pw - 20)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
    ]
    panels = [
        (
            "CPU ms per 1 000 datapoints (gateway process)",
            lambda r: r["cpu_ms_per_1000"]["gateway"],
        ),
        ("RSS MiB (gateway process)", lambda r: r["rss_mib"]),
    ]
    for i, (title, value) in enumerate(panels):
        top = max([value(r) for r in rows] + [1e-9]) * 1.15
        left = ml + i * (pw + gap)
        parts.append(
            f'<text x="{left}" y="{mt - 18}" font-weight="bold">{title}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
        )
        for k in range(5):  # y grid and labels
            v = top * k / 4
            y = mt + ph - ph * k / 4
            parts.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>'
            )
            parts.append(
                f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>'
            )
        for rate in rates:
            parts.append(
                f'<text x="{x(rate, i):.1f}" y="{mt + ph + 15}" text-anchor="middle">{rate / 1000:g} k/s</text>'
            )
        parts.append(
            f'<text x="{left + pw / 2}" y="{mt + ph + 30}" text-anchor="middle">offered datapoints/s</text>'
        )
        for g, gw in enumerate(gateways):
            pts = sorted(
                (r["offered_per_s"], value(r)) for r in rows if r["gateway"] == gw
            )
            xy = [(x(rate, i), mt + ph - ph * v / top) for rate, v in pts]
            colour = COLOURS[g % len(COLOURS)]
            if len(xy) > 1:
                path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
                parts.append(
                    f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
                )
            for (a, b), (_, v) in zip(xy, pts, strict=True):
                parts.append(
                    f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"><title>{v}</title></circle>'
                )
    for g, gw in enumerate(gateways):
        y = mt + ph + 48 + 18 * g
        parts.append(
            f'<rect x="{ml}" y="{y - 9}" width="14" height="10" fill="{COLOURS[g % len(COLOURS)]}"/>'
        )
        parts.append(f'<text x="{ml + 20}" y="{y}">{gw}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


WORK = {
    "edge-gateway": "QoS 2, zstd, fsync'd WAL",
    "ThingsBoard": "QoS 1, memory storage",
    "Node-RED": "QoS 2, no disk, no compression",
}


def _work(gw: str) -> str:
    return next((v for k, v in WORK.items() if gw.startswith(k)), "")


def markdown(fig: dict[str, Any], quick: bool, svg: bool) -> str:
    rows = fig["medians"]
    ref = [r for r in rows if r["period_ms"] == 100]
    out = [
        "## Peer comparison (same simulator, same Mosquitto, same machine, one run)",
        "",
        (
            f"Workload: {fig['workload']}; each gateway polls every register at the given period and publishes "
            "every value (edge-gateway: QoS 2, zstd batches, WAL with fsync; ThingsBoard: QoS 1, memory storage; "
            "Node-RED: modbus-read per 125-register block, 3 per unit, → mqtt out QoS 2, one JSON array per read). "
            "CPU = utime + stime from /proc/PID/stat over the window, per 1 000 delivered datapoints; the "
            "subscriber is the bench process itself. "
            f"Command: `tools/bench/bench_peers.py{' --quick' if quick else ''}`."
        ),
        "",
    ]
    for name, why in fig.get("skipped", {}).items():
        out += [f"**{name}: not measured** — {why}", ""]
    if ref:
        out += [
            "At 100 ms (36 000 datapoints/s offered), median of the runs:",
            "",
            "| | delivered | CPU per 1 000 frames | RSS |",
            "|---|---|---|---|",
        ]
        for r in ref:
            thinned = (
                ""
                if r["delivered_share"] >= 0.99
                else f" ({r['delivered_share']:.0%}, thinned)"
            )
            runs = (
                f", {r['runs']} runs, min {r['cpu_ms_min']:.1f}"
                if r["runs"] > 1
                else ""
            )
            out.append(
                f"| {r['gateway']} ({_work(r['gateway'])}) | {r['delivered_per_s'] / 1000:.1f} k/s{thinned} | "
                f"{r['cpu_ms_per_1000']['gateway']:.1f} ms{runs} | {r['rss_mib']:.0f} MiB |"
            )
        out.append("")
    if svg:
        out += [
            "![CPU per 1 000 datapoints and RSS against the offered rate](peers.svg)",
            "",
        ]
    out += [
        (
            "| gateway | poll | runs | offered /s | delivered /s | share | gateway CPU % of one core | "
            "CPU ms / 1 000: gateway · simulator · broker · subscriber | RSS MiB | load avg (1 min) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cpu_ms_per_1000"]
        out.append(
            f"| {r['gateway']} | {r['period_ms']} ms | {r['runs']} | {r['offered_per_s']:,} | "
            f"{r['delivered_per_s']:,.0f} | {r['delivered_share']:.1%} | {r['cpu_pct_one_core']} | "
            f"**{c['gateway']:.2f}** · {c['simulator']:.2f} · {c['broker']:.2f} · {c['subscriber']:.2f} | "
            f"{r['rss_mib']:.1f} | {' '.join(str(x) for x in r['loadavg'])} |"
        )
    for r in fig["runs"]:
        if "error" in r:
            out.append(
                f"| {r['gateway']} | {r['period_ms']} ms | | | failed: {r['error']} | | | | | |"
            )
    out += [
        "",
        (
            "Broker outage at the 1 s period (poll cycles of the outage window that never reached the subscriber; "
            "one cycle = one device's 360 values; ±1 cycle per device at the window edges is not counted; "
            "Node-RED's payload has no timestamp, so it is not in this table):"
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
    a = args("edge-gateway vs ThingsBoard IoT Gateway vs Node-RED on the same work")
    fig = compare.main(["--quick"] if a.quick else [])
    fig["medians"] = medians(fig["runs"])
    svg = bool(fig["medians"])
    if svg:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "peers.svg").write_text(chart(fig["medians"]))
    write(a.out, "peers", fig, markdown(fig, a.quick, svg))


if __name__ == "__main__":
    main()
