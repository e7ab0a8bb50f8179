"""A full disk under the real WalWriter (issue 14): a 2 MiB tmpfs, a filler file taking most of it. The
writer thread survives, no partly written record is ever visible, every accepted frame is committed once
space returns (no seq gap, no seq reused), and full_policy decides what gives way."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.bus.wal import Wal
from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.model import BusCfg, GatewayCfg
from edge_gateway.core.frame import Frame
from edge_gateway.metrics import value
from edge_gateway.testkit import LOOPBACK
from tests.consumer import BatchSubscriber

from ..runtime.plant import Plant, no_gaps
from .test_wal import cfg

DEADLINE = 30.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # lazy: even if a failed test left a file open


def fill(path: Path, leave: int) -> None:
    """Take all free space, then give back `leave` bytes."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\xaa" * (64 << 10))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        size = f.tell()
    os.truncate(path, max(0, size - leave))


def batch(n: int) -> list[Frame]:
    return [Frame(0, 1_700_000_000_000 + i, f"t{i % 9}", f"value {i} " * 3) for i in range(n)]


def read_seqs(wal: Wal, name: str) -> list[int]:
    c = wal.cursor(name)
    c.seek(1)
    out: list[int] = []
    while fr := c.read(1000, 0):
        out.extend(f.seq for f in fr)
    return out


def until(cond, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("policy", ["pause", "drop_oldest"])
def test_full_disk_holds_the_bus_keeps_every_frame_and_resumes_when_space_returns(disk: Path, policy: str) -> None:
    """One segment (nothing drop_oldest could free): the writer holds the bus until the filler goes."""
    c = cfg(disk / "wal", segment_bytes=8 << 20, flush_ms=5, full_policy=policy)
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=5000), wal=c))
    cur = wal.cursor("mqtt")
    fill(disk / "filler", leave=256 << 10)
    errors = value("framebus_wal_write_errors_total", {"reason": "enospc"})
    truncated = value("framebus_wal_truncated_bytes_total")
    dropped = value("framebus_drop_total", {"reason": "wal_full"})
    writer.start()
    accepted = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while wal.fault is None:  # producers that honour Pause, as the line threads do
            if not bus.paused:
                accepted += bus.publish(batch(50))
            writer.flush(5.0)
            assert time.monotonic() < deadline and writer.is_alive(), "the disk never filled"
        until(lambda: bus.paused, "a failing WAL pauses the producers")
        assert wal.fault == "enospc" and writer.is_alive()
        assert value("framebus_wal_fault", {"reason": "enospc"}) == 1
        assert value("framebus_wal_write_errors_total", {"reason": "enospc"}) > errors
        committed = wal.committed_seq
        assert 0 < committed < accepted
        assert read_seqs(wal, "check") == list(range(1, committed + 1))  # what is visible is whole
        accepted += bus.publish(batch(100))  # a producer that ignores Pause: the ring still takes it
        cur.ack(committed)  # an ack during the fault: persisted when it can be
        assert not writer.flush(5.0)  # a flush fails while the disk is full, and says so
        assert wal.committed_seq == committed and writer.is_alive()

        (disk / "filler").unlink()  # space returns
        until(lambda: wal.fault is None and not bus.paused, "the writer recovers by itself")
        assert writer.flush(5.0)
        assert value("framebus_wal_fault", {"reason": "enospc"}) == 0
        assert wal.committed_seq == accepted == bus.next_seq - 1
        assert read_seqs(wal, "check2") == list(range(1, accepted + 1))
        assert (disk / "wal" / "cursors" / "mqtt.ack").read_text().strip() == str(committed)
        assert value("framebus_drop_total", {"reason": "wal_full"}) == dropped
    finally:
        writer.stop()
    assert not writer.is_alive() and writer.error is None
    wal = Wal.open(c)  # a restart finds exactly the accepted frames: nothing torn, nothing to reuse
    assert wal.next_seq == accepted + 1
    assert value("framebus_wal_truncated_bytes_total") == truncated
    assert read_seqs(wal, "check3") == list(range(1, accepted + 1))
    wal.close()


def test_full_disk_with_drop_oldest_frees_the_oldest_segments_and_counts_the_loss(disk: Path) -> None:
    c = cfg(disk / "wal", segment_bytes=64 << 10, flush_ms=5, full_policy="drop_oldest")
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=5000), wal=c))
    wal.cursor("mqtt")  # acks nothing: every dropped frame is a lost one
    fill(disk / "filler", leave=512 << 10)
    errors = value("framebus_wal_write_errors_total", {"reason": "enospc"})
    dropped = value("framebus_drop_total", {"reason": "wal_full"})
    writer.start()
    accepted = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while value("framebus_drop_total", {"reason": "wal_full"}) - dropped < 1 or accepted < 30_000:
            if not bus.paused:
                accepted += bus.publish(batch(50))
            writer.flush(5.0)
            assert time.monotonic() < deadline and writer.is_alive(), "drop_oldest never dropped"
        until(lambda: writer.flush(5.0) and wal.fault is None, "drop_oldest makes room by itself")
        assert writer.is_alive()
        assert value("framebus_wal_write_errors_total", {"reason": "enospc"}) > errors  # the disk did fill
        assert wal.committed_seq == accepted == bus.next_seq - 1  # nothing accepted was lost in the writer
        first = wal.segments[0]
        assert value("framebus_drop_total", {"reason": "wal_full"}) - dropped == first - 1  # exactly what went
        assert read_seqs(wal, "check") == list(range(first, accepted + 1))
    finally:
        writer.stop()
    wal = Wal.open(c)
    assert wal.next_seq == accepted + 1
    wal.close()


def test_the_gateway_process_on_a_full_disk_reports_it_pauses_and_delivers_everything_after(tmp_path: Path) -> None:
    """The real `edge-gateway` (demo config, PLC simulator, Mosquitto) with its WAL on a filled tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    plant = Plant(tmp_path)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(wal_dir)], check=True)
    try:
        with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
            plant.start_gateway(notify=True)
            assert plant.notifications(lambda ms: any(m.startswith("READY=1") for m in ms), 30), plant.log_tail()
            assert sub.wait_for(lambda s: len(s.frames()) >= 16, 30), plant.log_tail()
            fill(wal_dir / "filler", leave=8 << 10)
            until(lambda: (plant.ctl("status")["wal"] or {}).get("fault") == "enospc", "the gateway sees the disk full")
            status = plant.ctl("status")
            assert status["bus"]["paused"] and status["supervisor"]["healthy"]  # held, not dead: no restart helps
            assert plant.metric("framebus_wal_fault", {"reason": "enospc"}) == 1
            shown = plant.notifications(lambda ms: any("wal FAULT enospc" in m for m in ms), 15)
            assert any(m.startswith("STATUS=") and "wal FAULT enospc" in m for m in shown), shown
            ctl = subprocess.run(
                [str(Path(sys.executable).with_name("edge-ctl")), "--config", str(plant.cfg), "status"],
                capture_output=True,
                text=True,
            )
            assert "FAULT enospc" in ctl.stdout and "PAUSED" in ctl.stdout, ctl.stdout + ctl.stderr
            assert "WAL commits fail (enospc)" in ctl.stdout, ctl.stdout  # the health reason, not only the WAL row

            (wal_dir / "filler").unlink()
            until(lambda: plant.ctl("status")["wal"]["fault"] is None, "the gateway recovers by itself")
            committed = plant.ctl("status")["wal"]["committed_seq"]
            assert sub.wait_for(lambda s: set(range(1, committed + 1)) <= set(s.seqs()), 30)
            assert plant.metric("framebus_wal_fault", {"reason": "enospc"}) == 0
            assert no_gaps(sorted(set(sub.seqs())))
        assert plant.gw is not None
        plant.gw.send_signal(signal.SIGTERM)
        assert plant.gw.wait(15) == 0
    finally:
        plant.stop()
        subprocess.run(["umount", "--lazy", str(wal_dir)], check=True)


def test_a_commit_the_disk_refuses_leaves_the_segment_as_it_was_and_keeps_the_frames(disk: Path) -> None:
    """Wal alone, no thread: the partly written record is cut off at once, nothing moves, the retry works."""
    c = cfg(disk / "wal", segment_bytes=8 << 20)
    wal = Wal.open(c)
    wal.append([Frame(1 + i, 1, "a", i) for i in range(100)])
    wal.commit()
    size = (disk / "wal" / "00000000000000000001.seg").stat().st_size
    fill(disk / "filler", leave=16 << 10)
    wal.append([Frame(101 + i, 1, "b", "x" * 100) for i in range(1000)])  # ~130 KiB: more than is left
    with pytest.raises(OSError) as e:
        wal.commit()
    assert e.value.errno == errno.ENOSPC and wal.fault == "enospc"
    assert (disk / "wal" / "00000000000000000001.seg").stat().st_size == size == wal.sizes[1]
    assert wal.committed_seq == 100 and wal.unwritten == 1000
    assert read_seqs(wal, "r") == list(range(1, 101))
    (disk / "filler").unlink()
    assert [f.seq for r in wal.commit() for f in r.frames()] == list(range(101, 1101))
    assert wal.fault is None and read_seqs(wal, "r2") == list(range(1, 1101))
    wal.close()
