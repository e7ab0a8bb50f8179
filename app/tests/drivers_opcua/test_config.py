"""The OPC UA plugin's config through `edge-cfg lint`: the sample config is clean, bad entries are
errors at their file:line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge_gateway.drivers.opcua as pkg

BIN = Path(sys.executable).parent
EXAMPLES = Path(pkg.__file__).parent / "examples"


def _cfg(d: Path) -> Path:
    for f in EXAMPLES.glob("*.yml"):
        shutil.copy(f, d / f.name)
    (d / "connector.yml").write_text(
        'cloud:\n  kind: mqtt5\n  endpoint: "tcp://127.0.0.1:1883"\n  tenant: t\n  device: d\n'
    )
    (d / "gateway.yml").write_text(f"wal: {{ dir: {d / 'wal'} }}\n")
    return d


def _lint(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "edge-cfg"), "lint", str(d)], capture_output=True, text=True, check=False)


def test_the_sample_config_lints_clean(tmp_path: Path) -> None:
    r = _lint(_cfg(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("file", "old", "new", "where", "message"),
    [
        ("variables.yml", '"ns=2;s=Counter"', '"Counter"', "variables.yml:3:", "is not a NodeId"),
        ("variables.yml", '"ns=2;i=1001"', '"ns=2;i=x"', "variables.yml:6:", "i= takes an unsigned 32-bit integer"),
        ("variables.yml", "datatype: uint32", "datatype: uint8", "variables.yml:3:", "uint8"),
        ("drivers.yml", "polling: 1000", "polling: fast", "drivers.yml:", "fast"),
        ("drivers.yml", "max_nodes_per_read: 100", "max_nodes_per_read: 0", "drivers.yml:", "max_nodes_per_read"),
        ("drivers.yml", '{ node: "ns=2;s=Faulty" }', '{ node: "ns=2;s=Faulty", every: 1 }', "drivers.yml:", "every"),
        ("endpoints.yml", "timeout: 4", "security_policy: Basic128", "endpoints.yml:", "Basic128"),
        ("endpoints.yml", "timeout: 4", "security_policy: Basic256Sha256", "endpoints.yml:2:", "certificate"),
        ("endpoints.yml", "timeout: 4", "username: op", "endpoints.yml:2:", "password_file"),
    ],
)
def test_bad_opcua_config_is_an_error_at_its_line(
    tmp_path: Path, file: str, old: str, new: str, where: str, message: str
) -> None:
    d = _cfg(tmp_path)
    text = (d / file).read_text()
    assert old in text
    (d / file).write_text(text.replace(old, new, 1))
    r = _lint(d)
    assert r.returncode == 1, r.stdout
    hit = [ln for ln in r.stdout.splitlines() if where in ln and message in ln]
    assert hit, r.stdout
