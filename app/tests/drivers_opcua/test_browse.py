"""`edge-cfg opcua browse` against the plcsim server: a variables.yml fragment that lints as is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_gateway.testkit import LOOPBACK, free_port

from .conftest import OpcuaSim
from .test_config import _cfg, _lint

BIN = Path(sys.executable).parent


def _browse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-cfg"), "opcua", "browse", *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_browse_prints_a_fragment_that_lints(sim: OpcuaSim, tmp_path: Path) -> None:
    r = _browse(f"opc.tcp://{LOOPBACK}:{sim.port}", "--node", f"ns={sim.ns};s=Plant", "--depth", "1",
                "--driver-id", "plant1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("- ")]
    assert any("tag: setpoint," in ln and "datatype: double, access: RW" in ln for ln in lines), r.stdout
    assert any("tag: locked," in ln and "access" not in ln for ln in lines), r.stdout
    assert any("datatype: datetime" in ln for ln in lines) and any("datatype: binary" in ln for ln in lines)
    d = _cfg(tmp_path)
    (d / "variables.yml").write_text(r.stdout.replace(f"ns={sim.ns};", "ns=2;"))
    lint = _lint(d)
    assert lint.returncode == 0, lint.stdout


def test_browse_of_an_unreachable_server_is_one_line_and_exit_2() -> None:
    r = _browse(f"opc.tcp://{LOOPBACK}:{free_port()}", "--timeout", "2")
    assert r.returncode == 2 and "cannot browse" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _browse("http://x").returncode == 2
