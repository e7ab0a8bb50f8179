"""The WAL on real files: group commit, recovery, torn tails, corruption, cursors, GC, max_bytes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_gateway.bus import record
from edge_gateway.bus.wal import Wal, WalLocked, seg_name
from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.model import BusCfg, GatewayCfg, WalCfg
from edge_gateway.core.frame import Frame, Kind
from edge_gateway.metrics import value


def cfg(d: Path, **kw) -> WalCfg:
    base = {"dir": str(d), "segment_bytes": 64 << 10, "flush_ms": 10, "max_bytes": 1 << 30}
    return WalCfg(**(base | kw))


def frames(first: int, n: int) -> list[Frame]:
    return [Frame(first + i, 1000 + i, f"t{i % 7}", float(first + i)) for i in range(n)]


def write(wal: Wal, first: int, n: int, per_record: int = 100) -> None:
    for s in range(first, first + n, per_record):
        wal.append(frames(s, min(per_record, first + n - s)))
    wal.commit()


def read_all(wal: Wal, name: str = "t") -> list[Frame]:
    c = wal.cursor(name)
    c.seek(1)
    out: list[Frame] = []
    while fr := c.read(1000, 0):
        out.extend(fr)
    return out


def test_roundtrip_every_value_type(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path))
    values = [None, True, False, 0, -1, 2**63 - 1, 2**70, 1.5, float("inf"), "", "ünï", b"\x00\xff", 7]
    fs = [Frame(i + 1, 5, f"tag{i}", v, "good" if i % 2 else "bad:timeout", Kind.DATA) for i, v in enumerate(values)]
    fs[-1].kind, fs[-1].meta = Kind.CMD, {"topic": "a/b", "qos": 1}
    wal.append(fs)
    wal.commit()
    wal.close()
    again = read_all(Wal.open(cfg(tmp_path)))
    assert again == fs


def test_seq_continues_across_reopen_and_lock_is_exclusive(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path))
    with pytest.raises(WalLocked, match="in use by another process"):
        Wal.open(cfg(tmp_path))
    write(wal, 1, 1000)
    wal.close()
    wal = Wal.open(cfg(tmp_path))
    assert wal.next_seq == 1001 and wal.committed_seq == 1000
    with pytest.raises(ValueError, match="already used"):
        wal.append(frames(5, 1))
    wal.close()


def test_segments_roll_and_open_scans_only_the_tail(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path, segment_bytes=8 << 10))
    write(wal, 1, 5000)
    wal.close()
    names = sorted(p.name for p in tmp_path.glob("*.seg"))
    assert len(names) > 5 and names[0] == seg_name(1)
    # Damage every non-tail segment: open must not notice (it never reads them)...
    for n in names[:-1]:
        (tmp_path / n).write_bytes(b"\xff" * 16)
    before = value("framebus_wal_corrupt_records_total")
    wal = Wal.open(cfg(tmp_path))
    assert wal.next_seq == 5001 and value("framebus_wal_corrupt_records_total") == before
    wal.close()


def test_torn_tail_is_truncated_at_every_offset(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path / "src"))
    write(wal, 1, 30, per_record=10)
    wal.close()
    seg = (tmp_path / "src" / seg_name(1)).read_bytes()
    spans = [s for s in record.scan(seg) if isinstance(s, record.Span)]
    last = spans[-1]
    for cut in range(last.offset, last.end):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / seg_name(1)).write_bytes(seg[:cut])
        w = Wal.open(cfg(d))
        assert w.next_seq == 21, cut  # the torn record (21..30) is gone, the rest intact
        assert [f.seq for f in read_all(w)] == list(range(1, 21))
        assert (d / seg_name(1)).stat().st_size == last.offset
        w.close()


def test_bit_flip_in_the_middle_is_reported_counted_and_skipped(tmp_path: Path, caplog) -> None:
    wal = Wal.open(cfg(tmp_path))
    write(wal, 1, 50, per_record=10)
    wal.close()
    path = tmp_path / seg_name(1)
    data = bytearray(path.read_bytes())
    spans = [s for s in record.scan(bytes(data)) if isinstance(s, record.Span)]
    data[spans[2].offset + 40] ^= 0x10  # inside the record holding seqs 21..30
    path.write_bytes(bytes(data))
    corrupt, dropped = value("framebus_wal_corrupt_records_total"), value("framebus_drop_total", {"reason": "corrupt"})
    w = Wal.open(cfg(tmp_path))
    assert w.next_seq == 51  # the records after the damage are kept
    assert value("framebus_wal_corrupt_records_total") == corrupt + 1
    assert value("framebus_drop_total", {"reason": "corrupt"}) == dropped + 10
    assert "damaged bytes" in caplog.text
    assert [f.seq for f in read_all(w)] == [*range(1, 21), *range(31, 51)]
    w.close()


def test_cursor_reads_from_memory_and_files_rewinds_and_persists_acks(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path, segment_bytes=4 << 10))
    c = wal.cursor("mqtt")
    write(wal, 1, 300, per_record=7)
    got = c.read(100, 0)
    assert [f.seq for f in got] == list(range(1, 101))  # from the memory cache
    c.ack(50)
    c.rewind()
    assert c.read(1, 0)[0].seq == 51
    wal.persist_acks()
    wal.close()
    wal = Wal.open(cfg(tmp_path))
    c = wal.cursor("mqtt")
    assert c.acked == 50 and c.lag == 250
    seqs = []
    while fr := c.read(13, 0):  # from segment files, in odd-sized reads across records
        seqs.extend(f.seq for f in fr)
    assert seqs == list(range(51, 301))
    wal.close()


def test_a_backlog_is_read_from_files_decoding_each_record_once(tmp_path: Path, monkeypatch) -> None:
    """Catching up after an outage: small reads out of large records (a writer drain is one record)."""
    wal = Wal.open(cfg(tmp_path, segment_bytes=64 << 10))
    write(wal, 1, 6000, per_record=1500)
    wal.close()
    wal = Wal.open(cfg(tmp_path))
    decoded: list[int] = []
    real = record.decode_block
    monkeypatch.setattr(record, "decode_block", lambda v, first, n, p: decoded.append(first) or real(v, first, n, p))
    c = wal.cursor("mqtt")
    seqs = []
    while fr := c.read(256, 0):
        seqs.extend(f.seq for f in fr)
    assert seqs == list(range(1, 6001))
    assert decoded == [1, 1501, 3001, 4501]
    c.rewind()  # back to the first unacked frame: the reader finds its place again
    assert [f.seq for f in c.read(3, 0)] == [1, 2, 3]
    wal.close()


def test_memory_holds_only_what_a_consumer_may_still_read(tmp_path: Path) -> None:
    """The in-memory tail is what bounds RSS: acked frames leave it, and a stalled consumer caps it."""
    from edge_gateway.bus.wal import CACHE_FRAMES

    wal = Wal.open(cfg(tmp_path))
    c = wal.cursor("mqtt")
    write(wal, 1, 1000)
    c.ack(900)
    write(wal, 1001, 10)
    assert (wal._cache_first, wal.cached_frames) == (901, 110)
    c.rewind()
    assert c.read(5, 0)[0].seq == 901
    write(wal, 1011, 2 * CACHE_FRAMES, per_record=4096)  # the consumer stalls: capped
    assert wal.cached_frames <= 2 * CACHE_FRAMES
    assert sum(b.count for b in wal._cache) <= 2 * CACHE_FRAMES + 4096  # whole blocks: one record more at most
    assert [f.seq for f in c.read(3, 0)] == [906, 907, 908]  # older frames come from the files
    wal.close()


def test_read_waits_for_a_commit(tmp_path: Path) -> None:
    bus, wal, writer = open_bus_and_wal(GatewayCfg(wal=cfg(tmp_path)))
    writer.start()
    c = wal.cursor("mqtt")
    t0 = time.monotonic()
    assert c.read(10, 0.05) == [] and time.monotonic() - t0 >= 0.04
    bus.publish(frames(0, 3))
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        got += c.read(10, 1.0)
    assert [f.seq for f in got] == [1, 2, 3]
    writer.stop()


def test_gc_waits_for_the_slowest_consumer(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path, segment_bytes=4 << 10))
    fast, slow = wal.cursor("fast"), wal.cursor("slow")
    write(wal, 1, 2000, per_record=20)
    n = len(wal.segments)
    fast.ack(2000)
    wal.gc()
    assert len(wal.segments) == n  # slow has acked nothing
    slow.ack(1000)
    wal.gc()
    assert 1 < len(wal.segments) < n
    assert wal.segments[0] <= 1001  # nothing slow still needs is gone
    assert [f.seq for f in read_all(wal, "check")][0] == wal.segments[0]
    wal.close()


def test_gc_never_deletes_above_what_the_cursor_files_hold(tmp_path: Path) -> None:
    """An ack only in memory must not let GC delete frames: after a power cut the cursor file would
    point into deleted frames (found by test_powercut.py)."""
    wal = Wal.open(cfg(tmp_path, segment_bytes=4 << 10))
    fast, slow = wal.cursor("fast"), wal.cursor("slow")
    write(wal, 1, 2000, per_record=20)
    fast.ack(2000)
    slow.ack(1000)  # neither persisted yet
    wal.gc()
    on_disk = {p.stem: int(p.read_text()) for p in (tmp_path / "cursors").glob("*.ack")}
    assert wal.segments[0] - 1 <= min(on_disk.values()), (wal.segments[0], on_disk)
    assert wal.segments[0] > 1  # and it still collected what the persisted acks allow
    wal.close()


def test_seq_is_never_reused_after_gc_deleted_everything(tmp_path: Path) -> None:
    wal = Wal.open(cfg(tmp_path, segment_bytes=4 << 10))
    c = wal.cursor("mqtt")
    write(wal, 1, 1000, per_record=20)
    c.ack(1000)
    wal.gc()
    wal.close()
    for p in tmp_path.glob("*.seg"):  # even if every segment is gone
        p.unlink()
    wal = Wal.open(cfg(tmp_path))
    assert wal.next_seq == 1001
    wal.close()


def test_max_bytes_drop_oldest_counts_exactly_what_is_lost(tmp_path: Path) -> None:
    c = cfg(tmp_path, segment_bytes=4 << 10, max_bytes=16 << 10, flush_ms=1)
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=100000), wal=c))
    a, b = wal.cursor("a"), wal.cursor("b")
    a.ack(0)
    before = value("framebus_drop_total", {"reason": "wal_full"})
    writer.start()
    for _i in range(0, 3000, 20):
        bus.publish(frames(0, 20))
        writer.flush()
    writer.flush()
    b.ack(wal.committed_seq)  # b is up to date, a acked nothing: a loses the dropped frames
    lost = value("framebus_drop_total", {"reason": "wal_full"}) - before
    assert wal.total_bytes <= 16 << 10 or len(wal.segments) == 1
    first = wal.segments[0]
    assert lost == first - 1  # exactly the frames before the oldest kept segment
    got = []
    while fr := a.read(1000, 0):
        got += fr
    assert got[0].seq == first and [f.seq for f in got] == list(range(first, 3001))
    writer.stop()


def test_max_bytes_pause_holds_producers_until_consumers_ack(tmp_path: Path) -> None:
    c = cfg(tmp_path, segment_bytes=4 << 10, max_bytes=16 << 10, full_policy="pause", flush_ms=1)
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=100000), wal=c))
    cur = wal.cursor("mqtt")
    signals: list[bool] = []
    bus.on_flow(signals.append)
    writer.start()
    while not bus.paused:
        bus.publish(frames(0, 20))
        writer.flush()
    assert signals == [True]
    cur.ack(wal.committed_seq)
    deadline = time.monotonic() + 5
    while bus.paused and time.monotonic() < deadline:
        writer.flush()
    assert signals == [True, False]
    assert value("framebus_drop_total", {"reason": "wal_full"}) >= 0  # nothing counted as lost by pause
    writer.stop()


def test_stalled_writer_pauses_producers_once_then_resumes_once(tmp_path: Path) -> None:
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=1000), wal=cfg(tmp_path)))
    signals: list[bool] = []
    bus.on_flow(signals.append)
    writer.start()
    writer.stall(0.5)
    time.sleep(0.05)
    skipped = 0
    for _ in range(100):  # a producer that honours Pause, as the line threads do
        if bus.paused:
            skipped += 1
        else:
            bus.publish(frames(0, 20))
        time.sleep(0.002)
    assert signals == [True] and skipped > 0
    deadline = time.monotonic() + 5
    while bus.paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert signals == [True, False]
    writer.stop()


def test_stop_drains_the_bus_and_flushes(tmp_path: Path) -> None:
    bus, wal, writer = open_bus_and_wal(GatewayCfg(wal=cfg(tmp_path, flush_ms=60000)))
    writer.start()
    bus.publish(frames(0, 500))
    writer.stop()
    assert not writer.is_alive()
    wal = Wal.open(cfg(tmp_path))
    assert wal.committed_seq == 500
    wal.close()


def test_sigkill_at_random_moments_loses_no_committed_frame(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "1")))
    iterations = int(os.environ.get("CRASH_ITERATIONS", "20"))
    child = Path(__file__).with_name("crash_writer.py")
    committed_before = 0
    for it in range(iterations):
        proc = subprocess.Popen(
            [sys.executable, str(child), str(tmp_path), str(rng.choice([4096, 16384, 1 << 20]))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        start = int(proc.stdout.readline().split()[1])
        assert start == committed_before + 1 or start > committed_before, "a committed seq would be reused"
        deadline = time.monotonic() + rng.uniform(0.05, 0.4)
        last = committed_before
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("committed"):
                last = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wal = Wal.open(cfg(tmp_path))
        assert wal.committed_seq >= last, f"iteration {it}: committed {last}, WAL has {wal.committed_seq}"
        seqs = [f.seq for f in read_all(wal, "crash-check")]
        assert seqs == list(range(1, wal.committed_seq + 1)), f"iteration {it}: gap or disorder"
        committed_before = wal.committed_seq
        wal.close()
    assert committed_before > 0


ODD = [
    Frame(1, 1700000000000, "a.float", 0.1),
    Frame(2, 1700000000001, "a.nan", float("nan")),
    Frame(3, 1700000000002, "a.bytes", b"\x00\xff"),
    Frame(4, 1700000000003, "a.none", None, "bad:timeout"),
    Frame(5, 1700000000004, "a.cmd", 7, kind=Kind.CMD),
    Frame(6, 1700000000005, "a.dup", True, meta={"dup": "possible", "topic": "x/y"}),
    Frame(7, 1700000000006, "a.é", 1 << 70),
    Frame(8, 1700000000007, "a.str", 's\u2603"\\'),
    Frame(9, 1700000000008, "a.inf", -float("inf")),
]


def same(a: Frame, b: Frame) -> bool:
    nan = isinstance(a.value, float) and a.value != a.value
    return (a.seq, a.ts, a.tag, a.q, a.kind, a.meta) == (b.seq, b.ts, b.tag, b.q, b.kind, b.meta) and (
        (nan and b.value != b.value) or (a.value == b.value and type(a.value) is type(b.value))
    )


def test_record_v2_gives_every_frame_back_and_marks_commands_and_dups() -> None:
    data, block = record.encode(ODD)
    (span,) = record.scan(data)
    assert isinstance(span, record.Span) and span.version == 2
    back = record.decode_block(2, span.first_seq, span.count, memoryview(data)[record.HEADER_SIZE :])
    assert all(same(a, b) for a, b in zip(ODD, back.frames(), strict=True))
    assert back.cmds == (4,) and back.dups == (5,)
    assert back.json(0, 1) == b'{"seq":1,"ts":1700000000000,"tag":"a.float","value":0.1,"q":"good"}'


def test_version_1_records_are_still_read_and_appended_to(tmp_path: Path) -> None:
    """A WAL an older gateway wrote (version 1 records) opens, reads, and goes on with version 2."""
    d = tmp_path / "wal"
    d.mkdir()
    (d / seg_name(1)).write_bytes(record.encode_v1(ODD[:5]) + record.encode_v1(ODD[5:]))
    wal = Wal.open(cfg(d))
    assert wal.next_seq == 10
    wal.append([Frame(10, 1, "b", 2.5), Frame(11, 1, "b", 3.5)])
    wal.commit()
    wal.close()
    wal = Wal.open(cfg(d))
    c = wal.cursor("mqtt")
    got = c.read(100, 0)
    assert [f.seq for f in got] == list(range(1, 12))
    assert all(same(a, b) for a, b in zip(ODD, got[:9], strict=True))
    versions = [s.version for s in record.scan((d / seg_name(1)).read_bytes()) if isinstance(s, record.Span)]
    assert versions == [1, 1, 2]
    wal.close()


def test_the_writers_fast_encoding_is_frame_json() -> None:
    """frames_json formats the common frame inline; every frame still gets exactly frame_json's bytes."""
    from edge_gateway.bus.framejson import frame_json, frames_json

    frames = [*ODD, Frame(10, 1, 'q"uote', 2, "bad:timeout"), Frame(11, 1, "i", -5), Frame(12, 1, "z", 1e300)]
    assert frames_json(frames) == [frame_json(f) for f in frames]
