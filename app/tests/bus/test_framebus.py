"""FrameBus: seq assignment, bounded ring, Pause/Resume hysteresis."""

from __future__ import annotations

import threading

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.model import BusCfg
from edge_gateway.core.frame import Frame, FrameBlock, frames_of
from edge_gateway.metrics import value


def frames(n: int) -> list[Frame]:
    return [Frame(0, 1, f"t{i}", i) for i in range(n)]


def test_seq_is_assigned_in_order_from_next_seq() -> None:
    bus = FrameBus(BusCfg(capacity=100), next_seq=42)
    assert bus.publish(frames(3)) == 3
    assert [f.seq for f in bus.drain(10, 0)] == [42, 43, 44]
    assert bus.next_seq == 45


def test_full_ring_refuses_and_counts() -> None:
    before = value("framebus_drop_total", {"reason": "ring_full"})
    bus = FrameBus(BusCfg(capacity=5), next_seq=1)
    assert bus.publish(frames(8)) == 5
    assert value("framebus_drop_total", {"reason": "ring_full"}) - before == 3
    # refused frames did not consume seqs: the next accepted frame follows on
    assert [f.seq for f in bus.drain(10, 0)] == [1, 2, 3, 4, 5]
    assert bus.publish(frames(1)) == 1
    assert bus.drain(1, 0)[0].seq == 6


def test_one_pause_and_one_resume_per_episode() -> None:
    bus = FrameBus(BusCfg(capacity=100, pause_hi=0.8, resume_lo=0.6))
    signals: list[bool] = []
    bus.on_flow(signals.append)
    for _ in range(9):  # climb to 90, crossing 80 once
        bus.publish(frames(10))
    assert signals == [True] and bus.paused
    bus.drain(15, 0)  # 75: between the marks, still paused
    bus.publish(frames(5))  # 80 again: no second Pause
    bus.drain(15, 0)  # 65
    assert signals == [True]
    bus.drain(5, 0)  # 60: resume
    assert signals == [True, False] and not bus.paused
    bus.drain(10, 0)
    assert signals == [True, False]


def test_hold_pauses_until_release() -> None:
    bus = FrameBus(BusCfg(capacity=100))
    signals: list[bool] = []
    bus.on_flow(signals.append)
    bus.hold()
    bus.hold()
    bus.release()
    assert signals == [True, False]


def test_drain_waits_for_a_producer() -> None:
    bus = FrameBus(BusCfg(capacity=100))
    t = threading.Timer(0.05, lambda: bus.publish(frames(2)))
    t.start()
    got = bus.drain(10, 5.0)
    t.join()
    assert len(got) >= 1


def test_a_drain_waiting_for_more_frames_takes_what_is_there_at_its_timeout() -> None:
    """The WAL writer waits for a drain's worth (wake_at), not for every publish; at its timeout it takes
    whatever waits, and a publish that reaches wake_at wakes it at once."""
    bus = FrameBus(BusCfg(capacity=1000, pause_hi=0.8, resume_lo=0.6))
    bus.publish([Frame(0, 1, f"t{i}", i) for i in range(10)])
    got = bus.drain(500, timeout=0.05, wake_at=100)
    assert [f.value for f in frames_of(got)] == list(range(10))

    out: list[list[Frame | FrameBlock]] = []
    t = threading.Thread(target=lambda: out.append(bus.drain(500, timeout=60, wake_at=100)))
    t.start()
    bus.publish([Frame(0, 1, "a", i) for i in range(40)])
    bus.publish_blocks([FrameBlock(0, 1, tuple(f"b{i}" for i in range(60)), list(range(60)))])
    t.join(30)
    assert not t.is_alive()
    assert len(frames_of(out[0])) == 100
    assert bus.drain(500, timeout=0) == []


def test_wake_at_is_capped_below_the_pause_mark() -> None:
    """A writer asking for more than the ring holds before pausing is still woken in time."""
    bus = FrameBus(BusCfg(capacity=100, pause_hi=0.8, resume_lo=0.6))
    out: list[list[Frame | FrameBlock]] = []
    t = threading.Thread(target=lambda: out.append(bus.drain(8192, timeout=60, wake_at=8192)))
    t.start()
    bus.publish([Frame(0, 1, "a", i) for i in range(40)])  # 40 = the cap (pause mark 80 // 2)
    t.join(30)
    assert not t.is_alive()
    assert len(frames_of(out[0])) == 40
    assert not bus.paused
