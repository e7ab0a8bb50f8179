"""`make fleet-demo` as a user runs it: one push, three gateways apply it, the fleet table shows all three."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_fleet_demo_applies_one_push_on_three_gateways_and_ends_what_it_started(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fleet_demo.py"), "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    rev = re.search(r"all three run revision (\d+)", out)
    assert rev is not None, out
    rows = [line.split() for line in out.splitlines() if re.match(r"gw[123]\s", line)]
    assert [r[0] for r in rows] == ["gw1", "gw2", "gw3"], out
    for r in rows:
        assert r[1] == "yes" and r[2] == rev.group(1) and r[3] == "-", out  # present, applied, nothing refused
    assert out.rstrip().endswith("every process it started has been stopped"), out
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True, check=False)
    assert leftover.stdout == "", leftover.stdout
