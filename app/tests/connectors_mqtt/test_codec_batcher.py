"""Batch payloads (SPEC §5) and the batching rules, without a broker."""

from __future__ import annotations

import json
import math

import zstandard

from edge_gateway.core.frame import Frame, Kind
from edge_gateway.delivery.batcher import Batcher
from edge_gateway.delivery.codec import Compressor, decode_payload, decode_value, frame_json, join_batch
from edge_gateway.delivery.inflight import Flight, Window


def test_frame_json_is_plain_json_with_markers() -> None:
    frames = [
        Frame(1, 1700000000000, "plant.flow", 12.5),
        Frame(2, 1700000000001, 'odd"tag', True),
        Frame(3, 1700000000002, "raw", b"\x00\xffA"),
        Frame(4, 1700000000003, "nan", math.nan, "bad:decode"),
        Frame(5, 1700000000004, "ctx", -(2**63), meta={"topic": "a/b", "inf": -math.inf, "b": b"z"}),
        Frame(6, 1700000000005, "name", "tank-1"),
        Frame(7, 1700000000006, "none", None, "bad:timeout"),
    ]
    decoded = json.loads(join_batch([frame_json(f) for f in frames]))
    assert [d["seq"] for d in decoded] == [1, 2, 3, 4, 5, 6, 7]
    assert decoded[0] == {"seq": 1, "ts": 1700000000000, "tag": "plant.flow", "value": 12.5, "q": "good"}
    assert decoded[1]["tag"] == 'odd"tag' and decoded[1]["value"] is True
    assert decoded[2]["value"] == {"b64": "AP9B"} and decode_value(decoded[2]["value"]) == b"\x00\xffA"
    assert decoded[3]["value"] == {"float": "NaN"} and math.isnan(decode_value(decoded[3]["value"]))  # type: ignore[arg-type]
    assert decoded[3]["q"] == "bad:decode"
    assert decoded[4]["value"] == -(2**63)
    assert decoded[4]["meta"] == {"topic": "a/b", "inf": {"float": "-Infinity"}, "b": {"b64": "eg=="}}
    assert decoded[5]["value"] == "tank-1" and decoded[6]["value"] is None
    assert json.loads(frame_json(frames[0], dup_possible=True))["dup"] == "possible"
    assert json.loads(frame_json(Frame(8, 1, "m", 1, meta={"dup": "possible"})))["dup"] == "possible"


def test_zstd_and_identity_round_trip() -> None:
    raw = join_batch([frame_json(Frame(i, 1700000000000 + i, f"line.tag{i % 8}", i * 0.5)) for i in range(1, 33)])
    z = Compressor(True)
    packed = z(raw)
    assert z.encoding == "zstd" and len(packed) * 4 < len(raw)
    assert zstandard.ZstdDecompressor().decompress(packed) == raw  # content size is in the frame header
    assert decode_payload(packed, "zstd") == json.loads(raw)
    ident = Compressor(False)
    assert ident.encoding == "identity" and ident(raw) is raw
    assert decode_payload(raw, "identity") == json.loads(raw)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _frames(first: int, n: int, kind: Kind = Kind.DATA) -> list[Frame]:
    return [Frame(s, 1700000000000, f"t{s}", float(s), kind=kind) for s in range(first, first + n)]


def test_batch_closes_at_count_then_age() -> None:
    clock = Clock()
    b = Batcher(max_frames=4, max_bytes=1 << 20, max_interval=1.0, clock=clock)
    closed = b.add(_frames(1, 10))
    assert [(x.first, x.last, x.count) for x in closed] == [(1, 4, 4), (5, 8, 4)]
    assert b.pending == 2 and b.take_due() is None
    clock.t += 0.99
    assert b.take_due() is None
    clock.t += 0.02
    last = b.take_due()
    assert last is not None and (last.seq_first, last.seq_last) == (9, 10)
    assert b.due_in() is None


def test_batch_closes_at_max_bytes_with_room_for_dup_marks() -> None:
    one = len(frame_json(_frames(1, 1)[0])) + len(',"dup":"possible"') + 1
    b = Batcher(max_frames=1000, max_bytes=2 + 3 * one, max_interval=1.0, clock=Clock())
    closed = b.add(_frames(1, 7))
    assert [x.count for x in closed] == [3, 3]
    for x in closed:
        assert len(join_batch([frame_json(f, True) for f in x.frames])) <= b.max_bytes
    big = Batcher(max_frames=1000, max_bytes=10, max_interval=1.0, clock=Clock())
    assert [x.count for x in big.add(_frames(1, 2))] == [1, 1]  # a frame larger than max_bytes goes alone


def test_cmd_frames_are_covered_not_sent() -> None:
    clock = Clock()
    b = Batcher(max_frames=3, max_bytes=1 << 20, max_interval=1.0, clock=clock)
    closed = b.add([*_frames(1, 2), *_frames(3, 2, Kind.CMD), *_frames(5, 1)])
    assert len(closed) == 1
    assert (closed[0].first, closed[0].last) == (1, 5)
    assert [f.seq for f in closed[0].frames] == [1, 2, 5]
    only_cmds = b.add(_frames(6, 2, Kind.CMD))
    assert only_cmds == [] and b.due_in() == 0.0  # nothing to wait for: release it at once
    skipped = b.take_due()
    assert skipped is not None and skipped.count == 0 and (skipped.first, skipped.last) == (6, 7)
    (after,) = b.add(_frames(8, 3))
    assert (after.cover_first, after.first, after.last) == (6, 8, 10)  # the skipped range is carried
    assert (closed[0].cover_first, closed[0].last) == (1, 5)


def test_window_acks_only_the_acknowledged_prefix() -> None:
    clock = Clock()
    batches = Batcher(2, 1 << 20, 1.0, clock=clock).add(_frames(1, 8))
    w = Window(3)
    flights = [Flight(b, qos=2) for b in batches]
    for mid, f in enumerate(flights[:3], start=10):
        w.add(f)
        w.track(f, mid)
    assert w.full
    w.settle(11)
    w.settle(12)
    assert w.advance() is None  # batch 1-2 still open: the cursor must not move
    assert w.forget(10) is flights[0] and not w.owns(10)  # refused: stays in the window for a retry
    w.track(flights[0], 13)
    w.settle(13)
    assert w.advance() == 6 and len(w) == 0 and not w.full
    assert w.settle(99) is None
