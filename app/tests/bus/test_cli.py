"""edge-bus as a subprocess on a real WAL directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import WalCfg
from edge_gateway.core.frame import Frame

EDGE_BUS = str(Path(sys.executable).with_name("edge-bus"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE_BUS, *args], capture_output=True, text=True)


def make_wal(d: Path) -> WalCfg:
    cfg = WalCfg(dir=str(d), segment_bytes=4096, max_bytes=1 << 30)
    wal = Wal.open(cfg)
    c = wal.cursor("mqtt")
    for s in range(1, 1001, 50):
        wal.append([Frame(s + i, 1000 + s + i, f"t{i % 3}", b"\x01" if i == 7 else float(s + i)) for i in range(50)])
    wal.commit()
    c.ack(600)
    wal.close()
    return cfg


def test_stats_replay_and_gc(tmp_path: Path) -> None:
    make_wal(tmp_path)
    r = run("--wal-dir", str(tmp_path), "stats", "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["committed_seq"] == 1000 and s["cursors"]["mqtt"] == {"acked": 600, "lag": 400}
    r = run("--wal-dir", str(tmp_path), "replay", "--from", "595", "--to", "610")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(595, 611))
    assert lines[0] == {"seq": 595, "ts": 1595, "tag": "t2", "value": 595.0, "q": "good"}
    assert {"b64": "AQ=="} in [x["value"] for x in lines]
    segments = s["segments"]
    r = run("--wal-dir", str(tmp_path), "gc", "--keep-bytes", "1K")
    assert r.returncode == 1 and "unacked" in r.stderr  # stops where the frames are not acked
    after = json.loads(run("--wal-dir", str(tmp_path), "stats", "--json").stdout)
    assert after["segments"] < segments and after["first_seq"] <= 601
    r = run("--wal-dir", str(tmp_path), "gc", "--keep-bytes", "1K", "--force")
    assert r.returncode == 0
    assert json.loads(run("--wal-dir", str(tmp_path), "stats", "--json").stdout)["segments"] == 1


def test_mutating_commands_refuse_a_wal_in_use(tmp_path: Path) -> None:
    cfg = make_wal(tmp_path)
    wal = Wal.open(cfg)  # as a running gateway would
    try:
        r = run("--wal-dir", str(tmp_path), "gc", "--keep-bytes", "0")
        assert r.returncode == 1 and "in use" in r.stderr
        assert run("--wal-dir", str(tmp_path), "stats").returncode == 0
        assert "1000" in run("--wal-dir", str(tmp_path), "stats").stdout
    finally:
        wal.close()
    assert run("--wal-dir", str(tmp_path), "flush").returncode == 0
