"""Crash-test child: publishes continuously through FrameBus + WalWriter and reports each
committed seq on stdout (after the fsync), until it is SIGKILLed by the test."""

from __future__ import annotations

import sys
import time

from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.model import BusCfg, GatewayCfg, WalCfg
from edge_gateway.core.frame import Frame


def main() -> None:
    wal_dir, segment_bytes = sys.argv[1], int(sys.argv[2])
    cfg = GatewayCfg(bus=BusCfg(capacity=20000), wal=WalCfg(dir=wal_dir, segment_bytes=segment_bytes, flush_ms=5))
    bus, wal, writer = open_bus_and_wal(cfg)
    print(f"start {wal.next_seq}", flush=True)
    writer.add_listener(lambda runs: print(f"committed {runs[-1].last_seq}", flush=True))
    writer.start()
    n = 0
    while True:
        if not bus.paused:
            batch = [Frame(0, 1_700_000_000_000 + n + i, f"t{(n + i) % 50}", float(n + i)) for i in range(50)]
            n += bus.publish(batch)
        time.sleep(0.0005)


if __name__ == "__main__":
    main()
