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


def test_a_missing_wal_dir_is_an_error_not_an_empty_wal(tmp_path: Path) -> None:
    r = run("--wal-dir", str(tmp_path / "nonexistent"), "stats")
    assert r.returncode == 2 and "is not a directory" in r.stderr and r.stdout == ""
    assert not (tmp_path / "nonexistent").exists()  # nothing created either


def big_wal(d: Path, frames: int) -> Wal:
    """One segment of `frames` frames (~37 bytes a record each)."""
    wal = Wal.open(WalCfg(dir=str(d), segment_bytes=64 << 20, max_bytes=1 << 30))
    for s in range(1, frames + 1, 1000):
        wal.append([Frame(s + i, 1, f"plant.tag_{i % 50}", float(s + i)) for i in range(1000)])
        wal.commit()
    wal.close()
    return wal


def test_replay_from_deep_inside_a_big_segment(tmp_path: Path) -> None:
    """--from N more than 1 MiB (one read chunk) into a segment used to print nothing and exit 0."""
    wal = big_wal(tmp_path, 100_000)
    assert len(wal.segments) == 1 and wal.total_bytes > 3 << 20
    r = run("--wal-dir", str(tmp_path), "replay", "--from", "90000", "--to", "90009")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == list(range(90000, 90010))


def test_replay_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path) -> None:
    big_wal(tmp_path, 10_000)  # ~700 kB of JSON lines: far more than a pipe buffer holds
    p = subprocess.Popen(
        [EDGE_BUS, "--wal-dir", str(tmp_path), "replay"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # `edge-bus replay | head -1`
    err = p.stderr.read().decode()
    assert p.wait(30) == 141 and "Traceback" not in err, err


def test_help_names_the_wal_dir_and_the_exit_codes() -> None:
    r = run("--help")
    assert r.returncode == 0 and "--wal-dir DIR" in r.stdout and "the WAL directory" in r.stdout
    assert "exit codes:" in r.stdout and all(f"  {c} " in r.stdout for c in ("0", "1", "2", "141"))
