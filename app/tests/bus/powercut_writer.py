"""Power-cut test child (test_powercut.py): the real FrameBus + WalWriter + Wal on a file system whose
power the test cuts, with two consumers that read, ack and so let GC delete segments.

    powercut_writer.py WAL_DIR GEN SEGMENT_BYTES FLUSH_MS

Every frame's content follows from the writer's generation GEN and its index n in this run
(`content`), so the test knows what each seq must hold: seq = start + n. Lines on stdout:

    start NEXT_SEQ COMMITTED_SEQ            after Wal.open (recovery), before the first frame
    appended LAST                           after each append: frames up to LAST are in the page cache
    committed FIRST LAST COUNT T            after each group commit: FIRST..LAST are durable and visible;
                                            T = time.monotonic() after the fsync returned (the system-wide
                                            clock the test reads just before it cuts the power)
    acked NAME SEQ T                        after persist_acks: NAME's cursor on disk is at least SEQ

It runs until the test cuts the power and SIGKILLs it (a write error after the cut ends it sooner).
"""

from __future__ import annotations

import sys
import threading
import time

from edge_gateway.bus.cursor import Cursor
from edge_gateway.bus.wal import Wal
from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.model import BusCfg, GatewayCfg, WalCfg
from edge_gateway.core.frame import Frame, Value

SLOW_LAG = 3000  # the slow consumer acks this many seqs behind what it has read: GC waits for it
BATCH = 40


def content(gen: int, n: int) -> tuple[int, str, Value]:
    """(ts, tag, value) of frame n of generation gen: values of changing types and sizes."""
    ts = 1_700_000_000_000 + gen * 10_000_000 + n
    tag = f"g{gen}.t{n % 50}"
    value: Value = f"g{gen}-n{n}-" + "x" * (n % 61) if n % 3 == 0 else n * 0.5 + gen
    return ts, tag, value


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def consume(wal: Wal, cur: Cursor, lag: int) -> None:
    last = cur.acked
    while True:
        frames = cur.read(2000, 0.05)
        if frames:
            last = frames[-1].seq
        if last - lag > cur.acked:
            cur.ack(last - lag)


def main() -> None:
    wal_dir, gen, segment_bytes, flush_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cfg = GatewayCfg(
        bus=BusCfg(capacity=20000),
        wal=WalCfg(dir=wal_dir, segment_bytes=segment_bytes, flush_ms=flush_ms, max_bytes=1 << 40),
    )
    bus, wal, writer = open_bus_and_wal(cfg)
    say(f"start {wal.next_seq} {wal.committed_seq}")

    persist = wal.persist_acks

    def persist_and_report() -> None:
        with wal._cond:
            wanted = {name: wal.acks[name] for name in wal._ack_dirty}
        persist()  # persists at least `wanted` (acks only move forward)
        t = time.monotonic()
        for name, seq in sorted(wanted.items()):
            say(f"acked {name} {seq} {t:.6f}")

    wal.persist_acks = persist_and_report  # type: ignore[method-assign]
    append = wal.append

    def append_and_report(frames: list[Frame]) -> None:
        append(frames)
        say(f"appended {frames[-1].seq}")

    wal.append = append_and_report  # type: ignore[method-assign]
    writer.add_listener(
        lambda runs: say(
            f"committed {runs[0].first_seq} {runs[-1].last_seq} {sum(r.count for r in runs)} {time.monotonic():.6f}"
        )
    )
    for name, lag in (("fast", 0), ("slow", SLOW_LAG)):
        threading.Thread(target=consume, args=(wal, wal.cursor(name), lag), daemon=True).start()
    writer.start()
    n = 0
    while writer.is_alive():
        if not bus.paused:
            batch = [Frame(0, *content(gen, n + i)) for i in range(BATCH)]
            n += bus.publish(batch)
        time.sleep(0.001)
    sys.exit(1)  # the writer died (a write error after the cut): nothing more is committed


if __name__ == "__main__":
    main()
