"""Power cuts through the real gateway (issue 14): the WAL on an ext4 loop device whose power is cut
(EXT4_IOC_SHUTDOWN with NOLOGFLUSH: nothing not yet fsynced reaches the device), the `edge-gateway`
process SIGKILLed at that instant, the file system remounted (journal replay = power back) and the
gateway started again, while the PLC simulator is polled and a persistent subscriber on a real
Mosquitto records every frame delivered.

After every cut: the WAL holds everything the gateway had called committed a moment before (its
control socket's `status`) and every seq the cloud has seen, with the content the cloud saw; nothing
is corrupt; the ack cursor is not ahead of the data and GC deleted nothing above it. At the end (a clean stop, then a run that drains the WAL): every
seq 1..N reached the cloud (batches' `cover` ranges chain, so a command record is not a hole) and no
seq was ever delivered with two different frames (a reused seq). `--cuts N` (default 10, HIL_CUTS),
`--powercut-seed`, `--powercut-report FILE`; `make powercut` runs 100 and writes build/powercut/report.json.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from edge_gateway.bus.wal import Wal
from edge_gateway.config.model import WalCfg
from edge_gateway.delivery.codec import frame_json
from edge_gateway.testkit import PowerCutDisk, power_cut_unsupported, stop_pid
from rig import LOOPBACK, Ledger, Rig
from test_hil import finish, flowing, tcp_plant
from tests.consumer import BatchSubscriber, Message

pytestmark = pytest.mark.skipif(
    power_cut_unsupported() is not None, reason=str(power_cut_unsupported())
)

FIELDS = ("tag", "ts", "value", "q")


def key(f: dict[str, Any]) -> str:
    """What a frame says, without its seq and a possible dup mark."""
    return json.dumps([f.get(k) for k in FIELDS])


class Recorder:
    """Every seq the cloud side received, with what it held; the Ledger tracks holes by `cover`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.lock = threading.Lock()
        self.seen: dict[int, str] = {}
        self.conflicts: list[str] = []

    def add(self, f: dict[str, Any], m: Message) -> None:
        self.ledger.add(f, m)
        seq, k = int(f["seq"]), key(f)
        with self.lock:
            old = self.seen.setdefault(seq, k)
            if old != k and len(self.conflicts) < 20:
                self.conflicts.append(f"seq {seq}: delivered as {old} and as {k}")

    @property
    def high(self) -> int:
        with self.lock:
            return max(self.seen, default=0)

    def snapshot(self) -> dict[int, str]:
        with self.lock:
            return dict(self.seen)


def check_wal_after_cut(
    wal_dir: Path, seen: dict[int, str], cut: int
) -> dict[str, int]:
    """The recovered WAL (opened as an offline tool does) against what the cloud has seen."""
    wal = Wal.open(WalCfg(dir=str(wal_dir)), readonly=True)
    committed = wal.committed_seq
    high = max(seen, default=0)
    assert wal.corrupt_records == 0, f"cut {cut}: {wal.corrupt_records} corrupt records"
    assert committed >= high, (
        f"cut {cut}: the cloud has seq {high}, the WAL ends at {committed}"
    )
    for name, acked in wal.acks.items():
        assert acked <= committed, (
            f"cut {cut}: cursor {name} at {acked} is ahead of the data ({committed})"
        )
    first = wal.segments[0] if wal.segments else wal.next_seq
    low = min(wal.acks.values(), default=0)
    assert first <= low + 1, (
        f"cut {cut}: frames above cursor {low} were deleted (WAL starts at {first})"
    )
    cur = wal.cursor("powercut-check")
    cur.seek(first)
    compared = 0
    while frames := cur.read(5000, 0):
        for fr in frames:
            if fr.seq in seen:
                got = key(json.loads(frame_json(fr)))
                assert got == seen[fr.seq], (
                    f"cut {cut}: seq {fr.seq} delivered as {seen[fr.seq]}, the WAL holds {got}"
                )
                compared += 1
    return {"committed": committed, "compared": compared, "segments": len(wal.segments)}


def test_power_cut_through_the_gateway(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    o = request.config.option
    seed = o.powercut_seed
    rng = random.Random(seed)
    disk = PowerCutDisk(rig.tmp / "disk", size_mib=128)
    disk.start()
    t0 = time.monotonic()
    cuts: list[dict[str, Any]] = []
    try:
        rig.wal = disk.mnt / "wal"
        tcp_plant(
            rig,
            units=2,
            regs=50,
            polling="100ms",
            wal={"segment_bytes": "16KiB", "flush_ms": 50},  # rolls and GC between cuts
        )
        rec = Recorder(rig.ledger)
        rig.sub = BatchSubscriber(
            LOOPBACK,
            rig.broker.port,
            client_id="hil-cloud",
            session_expiry=3600,
            on_frame=rec.add,
            keep=False,
        ).start()
        for i in range(o.cuts):
            rig.start_gateway()
            if i == 0:
                flowing(rig, 100)
            time.sleep(rng.uniform(0.1, 2.0))
            said = int(
                rig.ctl("status")["wal"]["committed_seq"]
            )  # what the gateway calls committed
            before = rec.high
            disk.cut()  # the power goes: nothing from now on reaches the device
            rig.kill_gateway()  # ... and the gateway with it
            disk.remount()  # the power comes back: ext4 replays its journal
            result = check_wal_after_cut(rig.wal, rec.snapshot(), i)
            assert result["committed"] >= said, (
                f"cut {i}: the gateway said {said} was committed, the WAL ends at {result['committed']}"
            )
            cuts.append(
                {"cut": i, "committed_said": said, "delivered_high": before, **result}
            )
        rig.start_gateway()
        high = rec.high
        rig.wait(lambda: rec.high > high, 30, "frames after the last cut")
        committed = finish(
            rig
        )  # clean stop, then a run that drains the WAL to the subscriber
        rig.stop_gateway()
        last = rig.committed()  # the drain run polled on: frames up to `last` exist
        assert not rec.conflicts, rec.conflicts
        assert rec.high <= last, f"the cloud has seq {rec.high}, the WAL only {last}"
        missing = rig.ledger.missing(committed)
        assert not missing, missing
        report = {
            "seed": seed,
            "cuts": len(cuts),
            "frames_committed": committed,
            "seqs_delivered": len(rec.seen),
            "frames_received": rig.ledger.frames,
            "duplicates": rig.ledger.duplicates,
            "lost": len(missing),
            "seq_reused": len(rec.conflicts),
            "corrupt_records": 0,
            "delivered_frames_checked_against_wal": sum(c["compared"] for c in cuts),
            "seconds": round(time.monotonic() - t0, 1),
            "per_cut": cuts,
        }
        print(json.dumps({k: v for k, v in report.items() if k != "per_cut"}))
        if o.powercut_report:
            out = Path(o.powercut_report)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if rig.gw is not None:
            stop_pid(rig.gw)  # type: ignore[arg-type]
            rig.gw = None
        disk.close()
