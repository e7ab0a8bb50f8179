"""FrameBlocks (one object per read) through the bus and the WAL: the same records, seqs and frames as the
Frames they stand for."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import zlib
from array import array
from itertools import accumulate, count
from operator import add
from pathlib import Path

import pytest

from edge_gateway.bus import framejson, record
from edge_gateway.bus.framebus import FrameBus
from edge_gateway.bus.wal import Wal
from edge_gateway.bus.writer import WalWriter
from edge_gateway.config.model import BusCfg, WalCfg
from edge_gateway.core.frame import GOOD, Frame, FrameBlock, Kind, Value, frames_of
from edge_gateway.metrics import value

EDGE_BUS = str(Path(sys.executable).with_name("edge-bus"))
ODD: list[Value] = [
    -0.0,
    0.0,
    1e16,
    1e-310,
    -1.5e300,
    float("nan"),
    float("inf"),
    -float("inf"),
    0,
    -1,
    2**63,
    -(2**200),
    True,
    False,
    None,
    "",
    'a%sé"\\',
    b"\x00\xff",
]


def random_value(rng: random.Random) -> Value:
    return rng.choice([rng.uniform(-1e6, 1e6), rng.randrange(-70000, 70000), rng.random(), rng.choice(ODD)])


def random_block(rng: random.Random, n: int) -> FrameBlock:
    tags = tuple(rng.choice(["a", "line1.t%d", "ünï", 'q"x', "s/%s"]) + str(i) for i in range(n))
    kind = rng.randrange(4)
    if kind == 0:  # a plain read: finite floats or ints
        values: list[Value] = [rng.uniform(-1e9, 1e9) if rng.random() < 0.5 else rng.randrange(1 << 40) for _ in tags]
    else:
        values = [random_value(rng) for _ in tags]
    q: str | list[str] = GOOD
    if kind == 2:
        q, values = rng.choice(["bad:timeout", "bad:100%"]), [None] * n
    elif kind == 3:
        q = [rng.choice([GOOD, "bad:scale", "bad:decode"]) for _ in tags]
    return FrameBlock(0, rng.randrange(1 << 41), tags, values, q)


def random_items(rng: random.Random, bus: FrameBus) -> None:
    """Blocks and Frame lists, interleaved, published on `bus`."""
    for _ in range(rng.randrange(1, 12)):
        if rng.random() < 0.6:
            bus.publish_blocks([random_block(rng, rng.randrange(1, 30)) for _ in range(rng.randrange(1, 4))])
        else:
            fs = [Frame(0, 7, f"f{i}", random_value(rng)) for i in range(rng.randrange(1, 20))]
            if rng.random() < 0.3:
                fs[0].kind, fs[0].meta = Kind.CMD, {"topic": "c/d"}
            if rng.random() < 0.3:
                fs[-1].meta = {"dup": "possible", "x": float("nan")}
            bus.publish(fs)


@pytest.mark.parametrize("seed", range(30))
def test_block_records_are_byte_identical_to_frame_records(seed: int) -> None:
    rng = random.Random(seed)
    bus = FrameBus(BusCfg(capacity=100_000), next_seq=rng.randrange(1, 10**12))
    random_items(rng, bus)
    items = bus.drain(100_000, 0)
    frames = frames_of(items)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    for b in (it for it in items if isinstance(it, FrameBlock)):
        assert framejson.block_json(b) == [framejson.frame_json(f) for f in b.frames()]
    assert record.encode(items)[0] == record.encode(frames)[0]


def test_seqs_stay_consecutive_and_are_never_reused_across_blocks_and_frames() -> None:
    rng = random.Random(5)
    bus = FrameBus(BusCfg(capacity=500), next_seq=10)
    seqs: list[int] = []
    for _ in range(200):
        random_items(rng, bus)  # often more than the ring holds: the rest is dropped, without a seq
        seqs += [f.seq for f in frames_of(bus.drain(rng.randrange(1, 400), 0))]
    seqs += [f.seq for f in frames_of(bus.drain(10**6, 0))]
    assert seqs == list(range(10, bus.next_seq))


def test_ring_full_and_pause_count_frames_of_blocks() -> None:
    before = value("framebus_drop_total", {"reason": "ring_full"})
    bus = FrameBus(BusCfg(capacity=100, pause_hi=0.8, resume_lo=0.6), next_seq=1)
    signals: list[bool] = []
    bus.on_flow(signals.append)

    def block(n: int) -> FrameBlock:
        return FrameBlock(0, 1, tuple(f"t{i}" for i in range(n)), list(range(n)))

    assert bus.publish_blocks([block(30), block(30)]) == 60 and len(bus) == 60 and not bus.paused
    assert bus.publish_blocks([block(25), block(20), block(5)]) == 25  # 20 do not fit whole: they and 5 dropped
    assert len(bus) == 85 and bus.paused and signals == [True]
    assert value("framebus_drop_total", {"reason": "ring_full"}) - before == 25
    assert bus.publish_blocks([block(15)]) == 15 and len(bus) == 100
    got = bus.drain(40, 0)  # whole blocks: 30 + 30, never a block cut
    assert [len(b) for b in got] == [30, 30] and len(bus) == 40 and signals == [True, False]
    assert [f.seq for f in frames_of(got + bus.drain(1000, 0))] == list(range(1, 101))
    assert bus.next_seq == 101


def test_a_block_must_have_a_value_and_quality_per_tag() -> None:
    with pytest.raises(ValueError):
        FrameBlock(0, 1, ("a", "b"), [1])
    with pytest.raises(ValueError):
        FrameBlock(0, 1, ("a",), [1], [GOOD, GOOD])


def write_with(tmp_path: Path, blocks: bool) -> tuple[Path, list[Frame]]:
    """One WAL written through the bus and the writer, from blocks or from the same frames."""
    d = tmp_path / ("blocks" if blocks else "frames")
    wal = Wal.open(WalCfg(dir=str(d), segment_bytes=8192, flush_ms=5, max_bytes=1 << 30))
    bus = FrameBus(BusCfg(capacity=10_000), next_seq=wal.next_seq)
    writer = WalWriter(bus, wal, wal.cfg)
    heard: list[Frame] = []
    writer.add_listener(lambda runs: heard.extend(f for r in runs for f in r.frames()))
    wal.cursor("mqtt")
    writer.start()
    rng = random.Random(11)
    for k in range(60):
        b = random_block(rng, rng.randrange(1, 40))
        if blocks:
            bus.publish_blocks([b])
        else:
            b.seq = bus.next_seq
            bus.publish(b.frames())
        if k % 10 == 0:
            bus.publish([Frame(0, 3, "sys.x", str(k), GOOD, Kind.DATA, {"k": k})])
        if k % 7 == 0:
            writer.flush()
    writer.flush()
    writer.stop()
    return d, heard


def test_a_wal_written_with_blocks_reads_back_as_with_frames(tmp_path: Path) -> None:
    got = {}
    for blocks in (True, False):
        d, heard = write_with(tmp_path, blocks)
        wal = Wal.open(WalCfg(dir=str(d), segment_bytes=8192, max_bytes=1 << 30))
        c = wal.cursor("mqtt")
        read: list[Frame] = []
        while fr := c.read(500, 0):
            read += fr
        wal.close()
        replay = subprocess.run([EDGE_BUS, "--wal-dir", str(d), "replay"], capture_output=True, text=True, check=True)
        got[blocks] = (heard, replay.stdout)
        assert [repr(f) for f in read] == [repr(f) for f in heard]  # repr: NaN != NaN
        assert len(replay.stdout.splitlines()) == len(read) == read[-1].seq
    assert got[True][1] == got[False][1]  # record boundaries follow the writer's timing: compare frames
    assert [repr(f) for f in got[True][0]] == [repr(f) for f in got[False][0]]


def test_a_torn_tail_after_block_records_is_truncated_and_the_rest_reads(tmp_path: Path) -> None:
    cfg = WalCfg(dir=str(tmp_path), segment_bytes=1 << 20, max_bytes=1 << 30)
    wal = Wal.open(cfg)
    rng = random.Random(3)
    blocks = [random_block(rng, 20) for _ in range(6)]
    for k, b in enumerate(blocks):
        b.seq = 1 + 20 * k
        wal.append([b])
    wal.commit()
    wal.close()
    [seg] = tmp_path.glob("*.seg")
    with open(seg, "ab") as f:
        f.write(record.encode(FrameBlock(121, 1, ("x",) * 5, [1.5] * 5).frames())[0][:-7])  # a write cut short
    wal = Wal.open(cfg)
    assert wal.next_seq == 121
    c = wal.cursor("t")
    c.seek(1)
    assert [repr(f) for f in c.read(1000, 0)] == [repr(f) for b in blocks for f in b.frames()]


def reference_record(first_seq: int, texts: list[str]) -> bytes:
    """A version 2 record of data frames without meta, built the plain way from each frame's JSON."""
    ends = array("I", map(add, accumulate(map(len, texts)), count()))
    payload = bytes(len(texts)) + ends.tobytes() + ",".join(texts).encode("ascii")
    tail = struct.pack("<QI", first_seq, len(texts))
    crc = zlib.crc32(tail + payload)
    return record.HEADER.pack(record.MAGIC, 2, 0, len(payload), crc, first_seq, len(texts)) + payload


PLAIN: list[Value] = [0, 7, 65535, -1, -70000, 2**62, 0.5, -0.0, 0.0, 1e16, 1e-310, 5e-324, -1.5e300, 1.7e308]


@pytest.mark.parametrize(
    "seq",
    [1, 990, 999, 1000, 1001, 1999, 123_456_789_000, 123_456_789_950, 999_950, 9_999_990, 10**12 - 3, 10**15 + 998],
)
@pytest.mark.parametrize("n", [1, 2, 13, 125, 1000, 1001])
def test_block_text_is_the_frames_json_joined_with_their_lengths(seq: int, n: int) -> None:
    """Seqs crossing a multiple of 1000 and a digit boundary (999 → 1000, 999_999 → 1_000_000), odd floats,
    negative ints and tags needing JSON escapes: the record's text and ends are the per-frame reference's."""
    rng = random.Random(seq * 7 + n)
    tags = tuple(rng.choice(["u1.hr_", 'q"x', "ünï\\", "s/%s\n", "\x00%d"]) + str(i) for i in range(n))
    values = [rng.choice(PLAIN) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6) for _ in tags]
    for vs in (values, [int(abs(v)) % 65536 for v in values], [-rng.randrange(10**6) for _ in tags]):
        for q in (GOOD, "bad:100%", [rng.choice([GOOD, "bad:scale"]) for _ in tags]):
            b = FrameBlock(seq, 1_700_000_000_123, tags, list(vs), q)
            ref = [framejson.frame_json(f) for f in b.frames()]
            fast = framejson.block_text(b)
            same_digits = len(str(seq // 1000)) == len(str((seq + n - 1) // 1000))
            plain = isinstance(q, str) and framejson._finite_numbers(b.values)  # a sum to inf takes the slow path
            if plain and seq >= 1000 and n <= 1000 and same_digits:
                assert fast is not None  # the fast path is the one tested here
            if fast is not None:
                assert fast[0] == ",".join(ref)
                assert fast[1] == [len(t) + 1 for t in ref]
            assert framejson.block_json(b) == ref
            data, block = record.encode([b])
            assert data == record.encode(b.frames())[0] == reference_record(seq, ref)
            assert [f.seq for f in block.frames()] == list(range(seq, seq + n))
