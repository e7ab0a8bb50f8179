"""The real gateway process as systemd runs it (SPEC §6): a NOTIFY_SOCKET the test reads, WATCHDOG_USEC set.
READY once the workers run, WATCHDOG only while every worker progresses, STATUS with a summary,
STOPPING and exit 0 on SIGTERM with everything on the bus committed to the WAL."""

from __future__ import annotations

import json
import signal

from .plant import Plant


def has(prefix: str) -> object:
    return lambda msgs: any(line.startswith(prefix) for m in msgs for line in m.splitlines())


def test_ready_watchdog_hung_worker_and_graceful_stop(plant: Plant) -> None:
    plant.start_gateway(notify=True, env={"EDGE_GATEWAY_TEST_HOOKS": "1"})
    first = plant.notifications(has("READY=1"), 30)
    assert any("READY=1" in m for m in first), plant.log_tail()
    ready = next(m for m in first if "READY=1" in m)
    assert "STATUS=lines 2/2" in ready and "uplink" in ready, ready

    healthy = plant.notifications(
        lambda ms: sum(m == "WATCHDOG=1" for m in ms) >= 4 and any(m.startswith("STATUS=") for m in ms), 15
    )
    assert sum(m == "WATCHDOG=1" for m in healthy) >= 4  # every 0.5 s with WATCHDOG_USEC=1 s
    assert any(m.startswith("STATUS=lines 2/2") for m in healthy), healthy

    # A WAL writer that stops making progress (as a hung disk would) stops the keep-alives...
    plant.ctl("test.stall_wal", seconds=14)
    hung = plant.notifications(has("STATUS=DEGRADED worker wal hung"), 20)
    assert any("worker wal hung" in m for m in hung), hung
    silent = plant.notifications(has("WATCHDOG=1"), 2.0)
    assert "WATCHDOG=1" not in silent, silent
    assert not plant.ctl("status")["supervisor"]["healthy"]
    # ...and they come back once it progresses again.
    back = plant.notifications(has("WATCHDOG=1"), 15)
    assert "WATCHDOG=1" in back, plant.log_tail()

    assert plant.gw is not None
    plant.gw.send_signal(signal.SIGTERM)
    assert plant.gw.wait(15) == 0
    stopping = plant.notifications(has("STOPPING=1"), 5)
    assert any("STOPPING=1" in m for m in stopping), stopping
    stopped = [
        rec
        for rec in map(json.loads, (plant.tmp / "gateway.log").read_text().splitlines())
        if rec["msg"].startswith("gateway stopped")
    ]
    assert len(stopped) == 1
    # Every frame the bus handed out is in the WAL, as the offline tool reads it.
    assert stopped[0]["committed_seq"] == stopped[0]["next_seq"] - 1 == plant.committed()
