#!/usr/bin/env python3
"""Join every build/bench/<name>.md into build/bench/report.md, headed by the machine and versions,
with an SVG chart of each figure against its SPEC §9 target (written by hand: no plotting
library in the lock file)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

ORDER = ["wal", "rtu", "e2e", "mqtt_source", "peers", "etcd"]
REF = {
    "workload": "reference"
}  # bench_e2e's 10 units × 360 registers at 100 ms (issue 19)
TARGETS = [  # (bench, path into its JSON, target, label); a label ending "≤" means lower is better
    ("wal", ("frames_per_s_best",), 1_000_000, "bus + WAL frames/s"),
    ("rtu", ("ratio",), 0.9, "RTU polls / wire bound"),
    (
        "e2e",
        ("uplink_path", 0, "frames_per_s"),
        50000,
        "end-to-end frames/s (QoS2, zstd, batch 32)",
    ),
    ("e2e", ("zstd", 0, "ratio"), 4.0, "zstd ratio (batch 32)"),
    (
        "e2e",
        ("gateway_summary", REF, "cpu_ms_per_1000_frames", "gateway", "median"),
        3.0,
        "gateway CPU ms / 1 000 frames @ 36 k/s ≤",
    ),
    (
        "e2e",
        ("gateway_summary", {"workload": "max-rate"}, "delivered_per_s", "median"),
        150000,
        "whole gateway frames/s (simulators pinned)",
    ),
    (
        "e2e",
        ("gateway_summary", {"workload": "memory-1k"}, "gateway_rss_mib", "median"),
        35.0,
        "RSS MiB at 1 000 tags ≤",
    ),
    (
        "e2e",
        ("gateway_summary", {"workload": "memory-10k"}, "gateway_rss_mib", "median"),
        50.0,
        "RSS MiB at 10 000 tags ≤",
    ),
]


def _dig(doc: object, path: tuple) -> float | None:
    """Follow keys and indexes; a dict in the path picks the first list element that matches it."""
    for key in path:
        try:
            if isinstance(key, dict):
                doc = next(x for x in doc if all(x.get(k) == v for k, v in key.items()))  # type: ignore[attr-defined, union-attr]
            else:
                doc = doc[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError, StopIteration, AttributeError):
            return None
    return doc if isinstance(doc, int | float) else None


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pkgs = [
        "pymodbus",
        "paho-mqtt",
        "zstandard",
        "prometheus-client",
        "PyYAML",
        "jsonschema",
        "pyserial",
    ]
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in pkgs)
    return (
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n- machine: {cpu}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}\n- Python {platform.python_version()}; {versions}\n"
        f"- load average when the report was written: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(each figure carries its own)\n"
    )


def chart(figs: dict[str, dict], out: Path) -> bool:
    rows = [
        (label, v, t)
        for b, path, t, label in TARGETS
        if (v := _dig(figs.get(b), path)) is not None
    ]
    if not rows:
        return False
    w, bar_h, gap, left = 780, 22, 14, 310
    h = 30 + len(rows) * (bar_h + gap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        '<text x="10" y="18" font-weight="bold">measured ÷ target, or target ÷ measured for ≤ (line = target)</text>',
    ]
    ratios = [
        (t / v if v else 0.0) if label.endswith("≤") else v / t for label, v, t in rows
    ]
    scale = (w - left - 60) / max(2.0, max(ratios))
    for i, ((label, v, t), r) in enumerate(zip(rows, ratios, strict=True)):
        y = 30 + i * (bar_h + gap)
        color = "#2a9d4b" if r >= 1 else "#d1495b"
        parts.append(f'<text x="10" y="{y + 15}">{label}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{r * scale:.1f}" height="{bar_h}" fill="{color}"/>'
        )
        parts.append(
            f'<text x="{left + r * scale + 5:.1f}" y="{y + 15}">{r:.2f}×</text>'
        )
        parts.append(
            f'<line x1="{left + scale}" y1="{y - 3}" x2="{left + scale}" y2="{y + bar_h + 3}" stroke="black"/>'
        )
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")
    return True


def soak(path: Path) -> str:
    """The last `make soak` (hil-tests/test_soak), when one has run on this checkout."""
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    return (
        f"\n## Soak (`make soak`, {when})\n\n"
        "| duration | offered frames/s | committed frames/s | committed through seq | frames received | duplicates | lost | "
        "broker outage | WAL-full drops |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['seconds']} s | {r['offered_frames_per_s']:,.0f} | {r['committed_frames_per_s']:,.0f} | "
        f"{r['frames_committed']:,} | {r['frames_received']:,} | {r['duplicates']} | {r['lost']} | "
        f"{r['broker_outage_s']:.0f} s | {r['wal_full_drops']:.0f} |\n"
    )


def main() -> None:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "build/bench")
    names = sorted(p.stem for p in d.glob("*.md") if p.stem != "report")
    names.sort(key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    figs = {
        n: json.loads((d / f"{n}.json").read_text())
        for n in names
        if (d / f"{n}.json").exists()
    }
    body = "\n".join((d / f"{n}.md").read_text() for n in names)
    has_chart = chart(figs, d / "report.svg")
    report = "# edge-gateway benchmark report\n\n" + machine() + "\n"
    if has_chart:
        report += "![figures against their targets](report.svg)\n\n"
    if (d / "peers.svg").exists():
        report += "Peers (edge-gateway, ThingsBoard, Node-RED): [CPU per frame and RSS against the offered rate](peers.svg)\n\n"
    report += body + soak(d.parent / "hil" / "soak.json")
    (d / "report.md").write_text(report)
    print(f"wrote {d / 'report.md'} ({len(names)} benchmarks)")


if __name__ == "__main__":
    main()
