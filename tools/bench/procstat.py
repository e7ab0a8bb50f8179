"""What the benchmarks read from /proc about the processes they start: CPU seconds (utime + stime,
all threads), resident memory, and the load of the machine they ran on; and where they pin them.

A figure of CPU is only honest per process and per PID: the gateway, the simulator, the broker and
the subscriber each pay for their share of a frame, and the machine is shared with other work."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (every thread), in seconds; the comm field may hold spaces or ')'."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pin(pid: int, cpus: set[int] | None) -> str:
    """Pin `pid` (all its threads: children created later inherit it) to `cpus`; '' or why not."""
    if not cpus:
        return ""
    avail = os.sched_getaffinity(0)
    use = cpus & avail
    if not use:
        return f"cpus {sorted(cpus)} not available (have {sorted(avail)})"
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), use)
        except OSError as e:
            return f"pin {pid}/{tid}: {e}"
    return ""


class CpuMeter:
    """CPU seconds of named processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.t0 = {n: cpu_seconds(p) for n, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {n: cpu_seconds(p) - self.t0[n] for n, p in self.pids.items()}
        return self.used


def spread(values: list[float]) -> dict[str, Any]:
    """min and median of the runs (the median is the figure quoted; min is the least disturbed run)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"min": None, "median": None, "max": None, "runs": values}
    return {
        "min": round(min(xs), 3),
        "median": round(statistics.median(xs), 3),
        "max": round(max(xs), 3),
        "runs": [round(x, 3) for x in xs],
    }
