"""Hot reload through the real gateway process (SPEC §2): a file change, SIGHUP and `edge-ctl reload`
each apply the smallest change, an invalid edit changes nothing, and a failure while applying rolls
everything the reload touched back to the running configuration."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Any

from edge_gateway.testkit import LOOPBACK
from edge_gateway.uplink.consumer import BatchSubscriber

from .plant import BIN, TAGS, Plant, latest, no_gaps

NEW_TAG = """
- tag: plant.level_raw
  driver_id: plc1
  address: { type: holding, addr: 30 }
  datatype: uint16
"""


def drivers(plant: Plant) -> dict[str, dict[str, Any]]:
    """driver id → its status entry (state, polls, since_ms…) across every line."""
    status = plant.ctl("status")
    return {d: entry for line in status["lines"].values() for d, entry in line["drivers"].items()}


def wait(predicate: Any, timeout: float, what: str, plant: Plant) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{plant.log_tail()}")


def edge_ctl(plant: Plant, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-ctl"), "--socket", plant.control, *args], capture_output=True, text=True, timeout=60
    )


def test_added_tag_appears_while_the_other_line_keeps_polling(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        plant.wait_ready()
        before = drivers(plant)
        lines_before = {ep: line["heartbeat_age_s"] for ep, line in plant.ctl("status")["lines"].items()}

        plant.sim.ctl(op="set", unit=1, table="holding", addr=30, value=777)
        plant.edit("variables.yml", append=NEW_TAG)  # atomic rename, as a deployment tool does
        assert sub.wait_for(lambda s: "plant.level_raw" in latest(s), 30), plant.log_tail()
        assert latest(sub)["plant.level_raw"]["value"] == 777
        assert plant.metric("cfg_apply_total", {"result": "ok"}) == 1
        after = drivers(plant)
        # A tag map swap restarts nothing: every unit keeps its start time and its poll count grows.
        for d in ("plc1", "meter1", "meter2"):
            assert after[d]["since_ms"] == before[d]["since_ms"], d
            assert after[d]["polls"] > before[d]["polls"], d
        assert set(lines_before) == set(plant.ctl("status")["lines"])
        # The RS-485 line's tags kept arriving across the reload, and nothing was lost anywhere.
        n = len(sub.frames())
        assert sub.wait_for(lambda s: sum(f["tag"] == "meter1.current_a" for f in s.frames()[n:]) >= 3, 15)
        assert no_gaps(sub.seqs())
        assert plant.ctl("status")["last_reload"]["reason"] == "file change"


def test_changed_driver_restarts_only_that_driver(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    wait(lambda: all(d["polls"] > 2 for d in drivers(plant).values()), 20, "polls", plant)
    before = drivers(plant)

    plant.edit("drivers.yml", ("cfg: { unit_id: 2, polling: 200ms", "cfg: { unit_id: 2, polling: 300ms"))
    done = edge_ctl(plant, "reload")  # races the file watcher: one of them applies it, the other finds no change
    assert done.returncode == 0, done.stderr + done.stdout
    assert plant.metric("cfg_apply_total", {"result": "ok"}) == 1
    changes = [r["changes"] for r in [plant.ctl("status")["last_reload"]] if r["result"] == "ok"]
    assert changes in ([], [["drivers changed: meter2"]]), changes
    after = drivers(plant)
    assert after["meter2"]["since_ms"] > before["meter2"]["since_ms"]
    assert after["meter1"]["since_ms"] == before["meter1"]["since_ms"]  # same line, untouched
    assert after["plc1"]["since_ms"] == before["plc1"]["since_ms"]
    assert after["meter1"]["polls"] >= before["meter1"]["polls"]
    wait(lambda: drivers(plant)["meter2"]["polls"] > 2, 20, "meter2 polling again", plant)

    again = edge_ctl(plant, "reload")  # nothing changed since
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stdout


def test_changed_endpoint_reopens_only_that_line(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        plant.wait_ready()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        before = drivers(plant)

        plant.edit("endpoints.yml", ("timeout: 1000ms", "timeout: 800ms"))  # the TCP PLC's line
        wait(lambda: plant.metric("cfg_apply_total", {"result": "ok"}) == 1, 20, "the reload", plant)
        assert "endpoints changed: plc_tcp" in plant.ctl("status")["last_reload"]["changes"]
        after = drivers(plant)
        assert after["plc1"]["since_ms"] > before["plc1"]["since_ms"]  # its line was drained and reopened
        for d in ("meter1", "meter2"):  # the RS-485 line was not touched
            assert after[d]["since_ms"] == before[d]["since_ms"], d
        n = len(sub.frames())
        assert sub.wait_for(lambda s: sum(f["tag"] == "plant.flow_m3h" for f in s.frames()[n:]) >= 3, 15)
        assert no_gaps(sub.seqs())


def test_invalid_edit_keeps_the_running_config_and_is_counted(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    revision = plant.ctl("status")["revision"]

    plant.edit("variables.yml", ("driver_id: meter2", "driver_id: meter9"))
    assert plant.gw is not None
    plant.gw.send_signal(signal.SIGHUP)
    wait(lambda: plant.metric("cfg_invalid_total") >= 1, 20, "cfg_invalid_total", plant)
    assert plant.metric("cfg_rollback_total") == 0

    refused = edge_ctl(plant, "reload")
    assert refused.returncode == 1
    assert "variables.yml:" in refused.stdout and "meter9" in refused.stdout, refused.stdout
    status = plant.ctl("status")
    assert status["revision"] == revision
    assert status["last_reload"]["result"] == "invalid"
    polls = drivers(plant)["meter2"]["polls"]
    wait(lambda: drivers(plant)["meter2"]["polls"] > polls, 20, "meter2 still polled", plant)
    assert plant.gw.poll() is None


def test_failure_while_applying_rolls_back(plant: Plant) -> None:
    with socket.socket() as taken, BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        plant.start_gateway()
        plant.wait_ready()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        revision = plant.ctl("status")["revision"]
        before = drivers(plant)

        # A driver change (applied first) and a /metrics address that cannot be bound (applied last).
        plant.edit(
            "drivers.yml",
            ("cfg: { unit_id: 2, polling: 200ms", "cfg: { unit_id: 2, polling: 300ms"),
        )
        plant.edit("gateway.yml", (f"127.0.0.1:{plant.metrics_port}", f"127.0.0.1:{taken.getsockname()[1]}"))
        done = edge_ctl(plant, "--json", "reload")
        assert done.returncode == 1, done.stdout + done.stderr
        assert '"result": "rollback"' in done.stdout and "Address already in use" in done.stdout

        # still served on the old port; 2 when the file watcher tried the same files first
        assert plant.metric("cfg_rollback_total") in (1, 2)
        assert plant.metric("cfg_apply_total", {"result": "ok"}) == 0
        status = plant.ctl("status")
        assert status["revision"] == revision
        after = drivers(plant)
        assert after["meter2"]["since_ms"] > before["meter2"]["since_ms"]  # restarted twice: new, then old
        assert after["plc1"]["since_ms"] == before["plc1"]["since_ms"]  # untouched by the reload
        assert sub.wait_for(lambda s: "sys.cfg_rollback" in latest(s), 15)
        frame = latest(sub)["sys.cfg_rollback"]
        assert frame["value"] != revision
        wait(lambda: drivers(plant)["meter2"]["polls"] > 2, 20, "meter2 polling again", plant)
        assert no_gaps(sub.seqs())
