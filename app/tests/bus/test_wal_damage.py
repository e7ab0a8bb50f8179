"""Media damage in closed segments (issue 14): every frame outside the damaged bytes is read, the loss is
counted once (metrics, log, `edge-bus stats`), and stray files in the WAL directory are ignored."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edge_gateway.bus import record
from edge_gateway.bus.wal import Wal, seg_name
from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.model import GatewayCfg
from edge_gateway.metrics import value

from .test_wal import cfg, write

EDGE_BUS = str(Path(sys.executable).with_name("edge-bus"))
N = 2000


def build(d: Path) -> list[int]:
    """A closed WAL of N frames in ~20-frame records over many 4 KiB segments; returns the segment names."""
    wal = Wal.open(cfg(d, segment_bytes=4 << 10))
    write(wal, 1, N, per_record=20)
    wal.close()
    return sorted(int(p.name[:20]) for p in d.glob("*.seg"))


def spans(path: Path) -> list[record.Span]:
    return [s for s in record.scan(path.read_bytes()) if isinstance(s, record.Span)]


def counters() -> tuple[float, float, float]:
    return (
        value("framebus_wal_corrupt_records_total"),
        value("framebus_wal_corrupt_bytes_total"),
        value("framebus_drop_total", {"reason": "corrupt"}),
    )


def read_seqs(wal: Wal, name: str, step: int) -> list[int]:
    c = wal.cursor(name)
    c.seek(1)
    out: list[int] = []
    while fr := c.read(step, 0):
        out.extend(f.seq for f in fr)
    return out


def stats(d: Path) -> dict:
    r = subprocess.run([EDGE_BUS, "--wal-dir", str(d), "stats", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.count("Traceback"), r.stderr
    return json.loads(r.stdout)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def damage(d: Path, how: str) -> tuple[int, int, set[int], int]:
    """Damage a middle segment; returns (segment, offset of the damage, seqs lost, bytes skipped)."""
    segs = build(d)
    victim, nxt = segs[len(segs) // 2], segs[len(segs) // 2 + 1]
    path = d / seg_name(victim)
    sp = spans(path)
    size = path.stat().st_size
    if how == "flip-last":
        s = sp[-1]
        flip(path, s.offset + record.HEADER_SIZE + 7)
        return victim, s.offset, set(range(s.first_seq, nxt)), size - s.offset
    if how == "flip-middle":
        s = sp[len(sp) // 2]
        flip(path, s.offset + record.HEADER_SIZE + 7)
        return victim, s.offset, set(range(s.first_seq, s.first_seq + s.count)), s.end - s.offset
    if how == "flip-header":  # the length field: the record claims to run far past the segment's end
        s = sp[1]
        flip(path, s.offset + 6)
        return victim, s.offset, set(range(s.first_seq, s.first_seq + s.count)), s.end - s.offset
    if how == "truncated":  # cut inside a record, as a lost block would
        s = sp[-3]
        cut = s.offset + (s.end - s.offset) // 2
        os.truncate(path, cut)
        return victim, s.offset, set(range(s.first_seq, nxt)), cut - s.offset
    if how == "truncated-at-record":  # no damaged byte left, but the segment's last records are missing
        s = sp[-2]
        os.truncate(path, s.offset)
        return victim, s.offset, set(range(s.first_seq, nxt)), 0
    assert how == "garbage"  # a file of noise named like a middle segment
    path.write_bytes(random.Random(7).randbytes(size))
    return victim, 0, set(range(victim, nxt)), size


@pytest.mark.parametrize(
    "how", ["flip-last", "flip-middle", "flip-header", "truncated", "truncated-at-record", "garbage"]
)
def test_damage_in_a_closed_segment_is_skipped_counted_once_and_shown(tmp_path: Path, how: str, caplog) -> None:
    victim, offset, lost, skipped = damage(tmp_path, how)
    before = counters()
    caplog.set_level(logging.WARNING)
    wal = Wal.open(cfg(tmp_path))
    assert counters() == before  # open reads only the tail segment
    assert read_seqs(wal, "a", 1000) == [s for s in range(1, N + 1) if s not in lost]
    assert read_seqs(wal, "b", 7) == [s for s in range(1, N + 1) if s not in lost]  # small reads, as the uplink
    records, nbytes, frames = (a - b for a, b in zip(counters(), before, strict=True))
    assert (records, nbytes, frames) == (1, skipped, len(lost))
    reports = [r for r in caplog.records if seg_name(victim) in r.getMessage()]
    assert len(reports) == 1 and f"offset {offset}" in reports[0].getMessage()
    wal.close()

    s = stats(tmp_path)  # offline, from what the gateway recorded
    assert (s["corrupt_records"], s["corrupt_bytes"], s["corrupt_frames"]) == (1, skipped, len(lost))
    assert s["damage"] == [{"segment": seg_name(victim), "offset": offset, "bytes": skipped, "frames": len(lost)}]
    text = subprocess.run([EDGE_BUS, "--wal-dir", str(tmp_path), "stats"], capture_output=True, text=True).stdout
    assert f"{seg_name(victim)} offset {offset}" in text
    r = subprocess.run([EDGE_BUS, "--wal-dir", str(tmp_path), "replay"], capture_output=True, text=True)
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [s for s in range(1, N + 1) if s not in lost]

    wal = Wal.open(cfg(tmp_path))  # after a restart the same damage is not counted again
    assert read_seqs(wal, "c", 1000) == [s for s in range(1, N + 1) if s not in lost]
    assert counters() == (before[0] + 1, before[1] + skipped, before[2] + len(lost))
    wal.close()


def test_damage_found_at_open_in_the_tail_segment_is_counted_once(tmp_path: Path) -> None:
    segs = build(tmp_path)
    path = tmp_path / seg_name(segs[-1])
    s = spans(path)[1]
    flip(path, s.offset + record.HEADER_SIZE + 3)
    before = counters()
    wal = Wal.open(cfg(tmp_path))
    assert counters() == (before[0] + 1, before[1] + s.end - s.offset, before[2] + s.count)
    lost = set(range(s.first_seq, s.first_seq + s.count))
    assert read_seqs(wal, "a", 1000) == [q for q in range(1, N + 1) if q not in lost]
    assert counters() == (before[0] + 1, before[1] + s.end - s.offset, before[2] + s.count)
    wal.close()


def test_stray_files_in_the_wal_directory_are_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    build(tmp_path)
    for stray in ("x.seg", "7.seg", "00000000000000000001.seg.bak"):
        (tmp_path / stray).write_bytes(b"not a segment")
    (tmp_path / "00000000000000009999.seg").mkdir()
    caplog.set_level(logging.WARNING)
    bus, wal, writer = open_bus_and_wal(GatewayCfg(wal=cfg(tmp_path)))  # what the gateway does at start
    assert "x.seg" in caplog.text and "7.seg" in caplog.text
    assert wal.next_seq == N + 1 and bus.next_seq == N + 1
    assert read_seqs(wal, "a", 1000) == list(range(1, N + 1))
    wal.close()
    s = stats(tmp_path)
    assert s["committed_seq"] == N and s["corrupt_records"] == 0
    assert (tmp_path / "x.seg").exists()  # not ours to delete
