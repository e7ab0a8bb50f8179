"""Hot reload through the real gateway process (SPEC §2): a file change, SIGHUP and `edge-ctl reload`
each apply the smallest change, an invalid edit changes nothing, and a failure while applying rolls
everything the reload touched back to the running configuration."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import types
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.metrics import REGISTRY
from edge_gateway.runtime import reload as reload_module
from edge_gateway.runtime.reload import ApplyError, Reloader
from edge_gateway.runtime.supervisor import Notifier, Supervisor, Watched
from edge_gateway.testkit import LOOPBACK
from tests.consumer import BatchSubscriber

from .plant import BIN, ROOT, TAGS, Plant, latest, no_gaps, wait

NEW_TAG = """
- tag: plant.level_raw
  driver_id: plc1
  address: { type: holding, addr: 30 }
  datatype: uint16
"""


def edge_ctl(plant: Plant, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-ctl"), "--socket", plant.control, *args], capture_output=True, text=True, timeout=60
    )


def test_added_tag_appears_while_the_other_line_keeps_polling(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        plant.wait_ready()
        before = plant.drivers()
        lines_before = {ep: line["heartbeat_age_s"] for ep, line in plant.ctl("status")["lines"].items()}

        plant.sim.ctl(op="set", unit=1, table="holding", addr=30, value=777)
        plant.edit("variables.yml", append=NEW_TAG)  # atomic rename, as a deployment tool does
        assert sub.wait_for(lambda s: "plant.level_raw" in latest(s), 30), plant.log_tail()
        assert latest(sub)["plant.level_raw"]["value"] == 777
        assert plant.metric("cfg_apply_total", {"result": "ok"}) == 1
        after = plant.drivers()
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
    wait(lambda: all(d["polls"] > 2 for d in plant.drivers().values()), 20, "polls", plant)
    before = plant.drivers()

    plant.edit("drivers.yml", ("cfg: { unit_id: 2, polling: 200ms", "cfg: { unit_id: 2, polling: 300ms"))
    done = edge_ctl(plant, "reload")  # races the file watcher: one of them applies it, the other finds no change
    assert done.returncode == 0, done.stderr + done.stdout
    assert plant.metric("cfg_apply_total", {"result": "ok"}) == 1
    changes = [r["changes"] for r in [plant.ctl("status")["last_reload"]] if r["result"] == "ok"]
    assert changes in ([], [["drivers changed: meter2"]]), changes
    after = plant.drivers()
    assert after["meter2"]["since_ms"] > before["meter2"]["since_ms"]
    assert after["meter1"]["since_ms"] == before["meter1"]["since_ms"]  # same line, untouched
    assert after["plc1"]["since_ms"] == before["plc1"]["since_ms"]
    assert after["meter1"]["polls"] >= before["meter1"]["polls"]
    wait(lambda: plant.drivers()["meter2"]["polls"] > 2, 20, "meter2 polling again", plant)

    again = edge_ctl(plant, "reload")  # nothing changed since
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stdout


def test_changed_endpoint_reopens_only_that_line(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        plant.wait_ready()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        before = plant.drivers()

        plant.edit("endpoints.yml", ("timeout: 1000ms", "timeout: 800ms"))  # the TCP PLC's line
        wait(lambda: plant.metric("cfg_apply_total", {"result": "ok"}) == 1, 20, "the reload", plant)
        assert "endpoints changed: plc_tcp" in plant.ctl("status")["last_reload"]["changes"]
        after = plant.drivers()
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
    polls = plant.drivers()["meter2"]["polls"]
    wait(lambda: plant.drivers()["meter2"]["polls"] > polls, 20, "meter2 still polled", plant)
    assert plant.gw.poll() is None


def test_failure_while_applying_rolls_back(plant: Plant) -> None:
    with socket.socket() as taken, BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        plant.start_gateway()
        plant.wait_ready()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        revision = plant.ctl("status")["revision"]
        before = plant.drivers()

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
        after = plant.drivers()
        assert after["meter2"]["since_ms"] > before["meter2"]["since_ms"]  # restarted twice: new, then old
        assert after["plc1"]["since_ms"] == before["plc1"]["since_ms"]  # untouched by the reload
        assert sub.wait_for(lambda s: "sys.cfg_rollback" in latest(s), 15)
        frame = latest(sub)["sys.cfg_rollback"]
        assert frame["value"] != revision
        wait(lambda: plant.drivers()["meter2"]["polls"] > 2, 20, "meter2 polling again", plant)
        assert no_gaps(sub.seqs())


# Each is a whole file's new content, or (old, new) edits of it: issue 14's inputs that killed the process
# (SIGSEGV) or the reload thread, and the lint rules a running gateway must refuse too.
BAD_CONFIGS: list[tuple[str, str, bytes | tuple[str, str]]] = [
    ("deep-nesting", "endpoints.yml", b"[" * 100_000),
    ("deep-block", "variables.yml", b"- " * 100_000 + b"x\n"),
    ("huge-int", "drivers.yml", ("unit_id: 1\n", "unit_id: " + "9" * 5000 + "\n")),
    ("scalar-endpoints", "endpoints.yml", b"42\n"),
    ("scalar-drivers", "drivers.yml", b"42\n"),
    ("list-connector", "connector.yml", b"- 1\n- 2\n"),
    ("nul", "endpoints.yml", b'plc_tcp:\n  scheme: tcp\n  host: "a\x00b"\n'),
    ("not-utf8", "variables.yml", b"\xff\xfe\x00"),
    ("empty-drivers", "drivers.yml", b""),
    ("bad-constructor", "gateway.yml", b"bus: !!int nope\n"),
    ("int-key", "endpoints.yml", b"1: {scheme: tcp, host: h, port: 1}\n"),
    ("scale-div-zero", "variables.yml", ('scale: "value / 10"', 'scale: "value / 0"')),
    ("scale-inf", "variables.yml", ('scale: "value / 10"', 'scale: "1e309 * value"')),
    ("polling-zero", "drivers.yml", ("polling: 200ms", "polling: 0s")),
    ("timeout-zero", "endpoints.yml", ("timeout: 1000ms", "timeout: 0ms")),
    ("qos-neg-zero", "connector.yml", ("qos: 2 ", "qos: -0.0 ")),
    ("missing-password-file", "connector.yml", ("# password_file:", "password_file:")),
]


def test_sighup_into_each_bad_config_keeps_the_process_and_the_running_config(plant: Plant) -> None:
    """Issue 14: each bad edit, then SIGHUP: the process lives, answers, keeps its revision and keeps
    polling; every later reload is still served, and a valid one at the end applies."""
    plant.start_gateway()
    plant.wait_ready()
    assert plant.gw is not None
    revision = plant.ctl("status")["revision"]
    for name, fname, bad in BAD_CONFIGS:
        path = plant.cfg / fname
        good = path.read_bytes()
        if isinstance(bad, tuple):
            assert bad[0].encode() in good, (name, bad[0])
            bad = good.replace(bad[0].encode(), bad[1].encode(), 1)
        tmp = path.with_suffix(".tmp~")
        tmp.write_bytes(bad)
        os.replace(tmp, path)
        plant.gw.send_signal(signal.SIGHUP)
        refused = edge_ctl(plant, "--json", "reload")  # queued behind the SIGHUP's: answered after it
        assert plant.gw.poll() is None, f"{name}: the gateway died ({plant.gw.returncode})\n{plant.log_tail()}"
        assert refused.returncode == 1 and '"result": "invalid"' in refused.stdout, (name, refused.stdout)
        assert re.search(r"\.yml:[0-9]+: ", refused.stdout), (name, refused.stdout)  # file:line problems
        assert plant.ctl("status")["revision"] == revision, name
        path.write_bytes(good)
    assert plant.metric("cfg_invalid_total") >= 2 * len(BAD_CONFIGS)
    assert plant.metric("cfg_apply_total", {"result": "ok"}) == 0
    polls = plant.drivers()["meter2"]["polls"]
    wait(lambda: plant.drivers()["meter2"]["polls"] > polls, 20, "meter2 still polled on the old config", plant)

    plant.edit("drivers.yml", ("cfg: { unit_id: 2, polling: 200ms", "cfg: { unit_id: 2, polling: 300ms"))
    plant.gw.send_signal(signal.SIGHUP)
    edge_ctl(plant, "reload")
    wait(lambda: plant.metric("cfg_apply_total", {"result": "ok"}) == 1, 20, "the valid reload", plant)
    assert plant.ctl("status")["revision"] != revision
    assert plant.gw.poll() is None


# -- the reload thread in-process: nothing a reload meets ends it, and a dead one is restarted --------------------
class StubGateway:
    """Gateway.apply's contract with scripted outcomes: an answer, or an exception to raise."""

    def __init__(self, *outcomes: Any) -> None:
        self.snapshot = types.SimpleNamespace(revision="0123456789ab")
        self.outcomes = list(outcomes)

    def apply(self, snapshot: Any) -> dict[str, Any]:
        out = self.outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return {"applied": True, "result": out, "revision": snapshot.revision}


def test_an_apply_that_raises_is_a_rollback_and_the_thread_lives_on(tmp_path: Path) -> None:
    cfg = shutil.copytree(ROOT / "config", tmp_path / "cfg", ignore=shutil.ignore_patterns("examples", "README.md"))
    rl = Reloader(StubGateway(RuntimeError("bug in apply"), "ok"), str(cfg), poll=0.05)  # type: ignore[arg-type]
    rl.start()
    try:
        first = rl.request("SIGHUP").result(timeout=30)
        assert first["result"] == "rollback" and "RuntimeError: bug in apply" in first["error"]
        assert rl.is_alive()
        assert rl.request("SIGHUP").result(timeout=30)["result"] == "ok"
    finally:
        rl.stop()


def test_a_loader_bug_is_refused_as_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_d: str) -> None:
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(reload_module.isolated, "load_snapshot", broken)
    rl = Reloader(StubGateway(), str(tmp_path), poll=0.05)  # type: ignore[arg-type]
    rl.start()
    try:
        answer = rl.request("SIGHUP").result(timeout=30)
        assert answer["result"] == "invalid" and "TypeError" in answer["problems"][0]
        assert rl.is_alive()
    finally:
        rl.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit under test
def test_a_dead_reload_thread_is_restarted_by_the_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = shutil.copytree(ROOT / "config", tmp_path / "cfg", ignore=shutil.ignore_patterns("examples", "README.md"))
    rl = Reloader(StubGateway(SystemExit(3), "ok"), str(cfg), poll=0.05)  # type: ignore[arg-type]
    before = REGISTRY.get_sample_value("supervisor_restart_total", {"worker": "reload"}) or 0.0
    sup = Supervisor(
        lambda: [Watched("reload", lambda: rl, stale_after=60, restart=rl.restart, backoff=0.01)],
        lambda: "",
        Notifier(),
    )
    rl.start()
    sup.start()
    try:
        died = rl.request("SIGHUP")
        with pytest.raises(ApplyError, match="the reload thread died: SystemExit"):
            died.result(timeout=30)
        deadline = time.monotonic() + 10
        while rl.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rl.restarts == 1
        assert rl.request("edge-ctl reload").result(timeout=30)["result"] == "ok"  # served by the new thread
        assert REGISTRY.get_sample_value("supervisor_restart_total", {"worker": "reload"}) == before + 1
        assert sup.problems == []
    finally:
        sup.stop()
        rl.stop()
