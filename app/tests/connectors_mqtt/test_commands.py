"""Command validation against the demo configuration: every refusal is acked and never written."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from edge_gateway.config.loader import load_snapshot
from edge_gateway.config.model import Snapshot
from edge_gateway.core.frame import Frame, Kind, Value, now_ms
from edge_gateway.delivery.commands import Ack, Downlink
from edge_gateway.delivery.ledger import SeqLedger
from edge_gateway.drivers.modbus.model import Variable
from edge_gateway.metrics import value as metric
from edge_gateway.runtime.commands import WriteRouter

CONFIG = Path(__file__).resolve().parents[3] / "config"


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return load_snapshot(CONFIG)


class Desk:
    """Collects what reached the 'line' and every ack; the line completes writes on its own thread."""

    def __init__(self, snapshot: Snapshot, fail: str | None = None, ledger: SeqLedger | None = None) -> None:
        self.writes: list[tuple[str, Value]] = []
        self.acks: list[Ack] = []
        self.frames: list[Frame] = []
        self.done = threading.Event()
        self.fail = fail
        self.downlink = Downlink(
            "t", WriteRouter(lambda: snapshot, submit_item=self.submit), self.record, ledger=ledger
        )

    def submit(self, var: Variable, value: Value) -> Future[None]:
        self.writes.append((var.tag, value))
        fut: Future[None] = Future()

        def complete() -> None:
            if self.fail:
                fut.set_exception(RuntimeError(self.fail))
            else:
                fut.set_result(None)

        threading.Thread(target=complete).start()
        return fut

    def record(self, frames: list[Frame]) -> int:
        self.frames.extend(frames)
        return len(frames)

    def send(self, tag: str, payload: object, retained: bool = False) -> Ack:
        self.done.clear()
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.downlink.handle(tag, raw, retained, self._ack)
        assert self.done.wait(5)
        return self.acks[-1]

    def _ack(self, ack: Ack) -> None:
        self.acks.append(ack)
        self.done.set()


def test_valid_write_is_routed_and_acked_ok(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    before = metric("connector_cmd_total", {"connector": "t", "result": "ok", "reason": "none"})
    ack = desk.send("plant.setpoint_c", {"seq": 7, "value": 21.5, "meta": {"by": "test"}, "ttl": "5s"})
    assert (ack.seq, ack.result, ack.error) == (7, "ok", None)
    assert desk.writes == [("plant.setpoint_c", 21.5)]
    body = json.loads(ack.payload())
    assert body["result"] == "ok" and body["error"] is None and body["ts"] > 0
    assert metric("connector_cmd_total", {"connector": "t", "result": "ok", "reason": "none"}) == before + 1
    assert [f.kind for f in desk.frames] == [Kind.CMD, Kind.CMD]  # arrival + outcome, for audit
    assert [f.meta["stage"] for f in desk.frames if f.meta] == ["received", "done"]
    assert desk.frames[0].meta and desk.frames[0].meta["cmd_meta"] == {"by": "test"}
    assert desk.send("plant.pump_on", {"seq": 8, "value": True}).result == "ok"


@pytest.mark.parametrize(
    ("tag", "payload", "reason"),
    [
        ("plant.flow_m3h", {"seq": 1, "value": 5}, "read_only"),  # access R
        ("meter1.energy_wh", {"seq": 2, "value": 5}, "read_only"),  # R (and no enable_write)
        ("plant.nope", {"seq": 3, "value": 5}, "unknown_tag"),
        ("plant.setpoint_c", {"seq": 4, "value": 4000.0}, "out_of_range"),  # raw 40000 > int16
        ("plant.setpoint_c", {"seq": 5, "value": 21.55}, "invalid_value"),  # raw 215.5: not an integer
        ("plant.setpoint_c", {"seq": 6, "value": "hot"}, "invalid_value"),
        ("plant.setpoint_c", {"seq": 7, "value": True}, "invalid_value"),
        ("plant.pump_on", {"seq": 8, "value": 2}, "invalid_value"),
        ("plant.setpoint_c", {"seq": 9, "value": 20, "ttl": "1s", "ts": now_ms() - 5000}, "expired"),
        ("plant.setpoint_c", {"seq": 10, "value": 20, "ttl": "0s"}, "expired"),
        ("plant.setpoint_c", {"seq": 11, "value": 20, "ttl": "soon"}, "malformed"),
        ("plant.setpoint_c", {"seq": 12, "value": 20, "colour": "red"}, "malformed"),
        ("plant.setpoint_c", {"seq": 13}, "malformed"),
        ("plant.setpoint_c", {"seq": "14", "value": 1}, "malformed"),
        ("plant.setpoint_c", {"seq": 15, "value": 1, "tag": "plant.pump_on"}, "malformed"),
        ("plant.setpoint_c", {"seq": 16, "value": [1, 2]}, "malformed"),
    ],
)
def test_refused_commands_are_acked_and_never_written(snapshot: Snapshot, tag: str, payload: dict, reason: str) -> None:
    desk = Desk(snapshot)
    ack = desk.send(tag, payload)
    assert (ack.result, ack.reason) == ("fail", reason), ack.error
    assert ack.error
    assert desk.writes == []
    want_seq = payload["seq"] if isinstance(payload.get("seq"), int) else None
    assert ack.seq == want_seq
    assert desk.frames and desk.frames[-1].kind is Kind.CMD and desk.frames[-1].q.startswith("bad:")


def test_malformed_json_acks_when_a_seq_can_be_read(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    ack = desk.send("plant.setpoint_c", b'{"seq": 41, "value": 1,,}')
    assert (ack.seq, ack.result, ack.reason) == (41, "fail", "malformed")
    before = metric("connector_cmd_total", {"connector": "t", "result": "fail", "reason": "malformed"})
    ack = desk.send("plant.setpoint_c", b"\xff\xfe not json at all")
    assert ack.seq is None  # nothing to address an ack to, but it is counted
    assert metric("connector_cmd_total", {"connector": "t", "result": "fail", "reason": "malformed"}) == before + 1
    assert desk.writes == []


def test_retained_and_shutdown_refusals(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    assert desk.send("plant.setpoint_c", {"seq": 1, "value": 20}, retained=True).reason == "retained"
    desk.downlink.accepting = False
    assert desk.send("plant.setpoint_c", {"seq": 2, "value": 20}).reason == "unavailable"
    assert desk.writes == []


def test_device_failure_is_acked_fail(snapshot: Snapshot) -> None:
    desk = Desk(snapshot, fail="device exception 2 (illegal data address)")
    ack = desk.send("plant.setpoint_c", {"seq": 3, "value": -12.3})
    assert (ack.result, ack.reason) == ("fail", "write_error")
    assert ack.error and "illegal data address" in ack.error
    assert desk.writes == [("plant.setpoint_c", -12.3)]


def test_topic_templates_default_and_seed_forms(snapshot: Snapshot) -> None:
    from dataclasses import replace

    from edge_gateway.connectors.mqtt.topics import Topics

    conn = next(iter(snapshot.connectors.values()))
    t = Topics.of(conn)
    assert t.cmd_filter == "/edge/demo/edge-01/cmd/+"
    assert t.cmd_tag("/edge/demo/edge-01/cmd/plant.setpoint_c") == "plant.setpoint_c"
    assert t.cmd_tag("/edge/other/edge-01/cmd/plant.setpoint_c") is None
    assert t.ack_topic(12) == "/edge/demo/edge-01/ack/12" and t.batch == "/edge/demo/edge-01/batch"
    seed = Topics.of(replace(conn, cmd_topic="/edge/cmd/{tag}", ack_topic="/edge/ack/{seq}"))
    assert seed.cmd_filter == "/edge/cmd/+" and seed.cmd_tag("/edge/cmd/plant.pump_on") == "plant.pump_on"
    assert seed.ack_topic(5) == "/edge/ack/5"


def test_a_command_for_an_mqtt_source_tag_is_refused_as_read_only() -> None:
    """Tags that arrive from a local MQTT device have no write path: the ack says so."""
    example = load_snapshot(CONFIG / "examples" / "mqtt-source")
    desk = Desk(example)
    for seq, tag in enumerate(("lab.boiler.temp_c", "lab.oven.temp_c", "lab.oven.rh_pct"), 1):
        ack = desk.send(tag, {"seq": seq, "value": 1})
        assert (ack.result, ack.reason) == ("fail", "read_only"), ack.error
        assert "MQTT source" in (ack.error or "")
    assert desk.send("lab.oven", {"seq": 9, "value": 1}).reason == "unknown_tag"
    assert desk.writes == []


# -- hostile payloads, replays, the refusal log (issue 14: 6, 7) ------------------------------------------


def test_deep_nesting_is_refused_not_a_crash(snapshot: Snapshot) -> None:
    """`"meta":` + 100 000 `[` made json.loads raise RecursionError into the MQTT thread."""
    desk = Desk(snapshot)
    ack = desk.send("plant.setpoint_c", b'{"seq":1,"value":1,"meta":' + b"[" * 60_000)  # under 64 KiB
    assert (ack.seq, ack.result, ack.reason) == (1, "fail", "malformed")
    assert "nests deeper" in (ack.error or "")
    huge = desk.send("plant.setpoint_c", b'{"seq":6,"value":1,"meta":' + b"[" * 100_000)  # the report's payload
    assert (huge.seq, huge.result) == (6, "fail")
    desk.downlink.max_bytes = 1 << 20
    assert desk.send("plant.setpoint_c", b'{"seq":7,"value":1,"meta":' + b"[" * 100_000).reason == "malformed"
    # closed, and hidden behind brackets inside strings: still counted right
    deep = b'{"seq":2,"value":1,"meta":{"a":' + b"[" * 40 + b"]" * 40 + b"}}"
    assert desk.send("plant.setpoint_c", deep).reason == "malformed"
    fake = json.dumps({"seq": 3, "value": 20, "meta": {"note": "[[[[{{{{" * 50}}).encode()
    assert desk.send("plant.setpoint_c", fake).result == "ok"
    # other things a hostile payload provokes inside the decoder are refusals too
    assert desk.send("plant.setpoint_c", b'{"seq":4,"value":' + b"9" * 5000 + b"}").reason == "malformed"
    assert desk.send("plant.setpoint_c", {"seq": 5, "value": 10**30}).reason == "out_of_range"
    assert desk.send("plant.setpoint_c", {"seq": 8, "value": 10**400}).reason == "out_of_range"
    assert desk.writes == [("plant.setpoint_c", 20)]


def test_oversized_command_is_refused_before_parsing_and_not_stored(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    before = metric("connector_cmd_total", {"connector": "t", "result": "fail", "reason": "too_large"})
    big = b'{"seq":300,"value":33,"meta":{"blob":"' + b"x" * (10 << 20) + b'"}}'
    ack = desk.send("plant.setpoint_c", big)
    assert (ack.seq, ack.result, ack.reason) == (300, "fail", "too_large")
    assert metric("connector_cmd_total", {"connector": "t", "result": "fail", "reason": "too_large"}) == before + 1
    assert desk.writes == []
    assert len(desk.frames) == 1 and "cmd_meta" not in (desk.frames[0].meta or {})  # 10 MB never reach the WAL
    assert desk.send("plant.setpoint_c", b"x" * 70_000).seq is None  # counted; nothing to ack to
    small = Desk(snapshot)
    small.downlink.max_bytes = 100
    assert small.send("plant.setpoint_c", {"seq": 9, "value": 20, "meta": {"n": "y" * 100}}).reason == "too_large"
    assert small.send("plant.setpoint_c", {"seq": 10, "value": 20}).result == "ok"


def test_meta_is_stored_once_per_command(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    assert desk.send("plant.setpoint_c", {"seq": 1, "value": 20, "meta": {"by": "x"}}).result == "ok"
    assert [("cmd_meta" in (f.meta or {})) for f in desk.frames] == [True, False]


def test_duplicate_seq_is_acked_with_the_first_outcome_and_not_written_again(snapshot: Snapshot) -> None:
    desk = Desk(snapshot)
    first = desk.send("plant.setpoint_c", {"seq": 77, "value": 22.5})
    assert first.result == "ok" and desk.writes == [("plant.setpoint_c", 22.5)]
    again = desk.send("plant.setpoint_c", {"seq": 77, "value": 22.5, "meta": {"retry": 1}})
    assert (again.seq, again.result, again.reason) == (77, "ok", "none")
    assert desk.writes == [("plant.setpoint_c", 22.5)]  # not executed twice
    refused = desk.send("plant.setpoint_c", {"seq": 78, "value": 4000.0})
    assert desk.send("plant.setpoint_c", {"seq": 78, "value": 4000.0}).reason == refused.reason == "out_of_range"
    # the same seq for another command is not a replay: refused, and the first outcome stands
    other = desk.send("plant.pump_on", {"seq": 77, "value": False})
    assert (other.result, other.reason) == ("fail", "seq_reused")
    assert desk.writes == [("plant.setpoint_c", 22.5)]
    # transient refusals are not outcomes: a retry with the same seq runs
    desk.downlink.accepting = False
    assert desk.send("plant.setpoint_c", {"seq": 79, "value": 20}).reason == "unavailable"
    assert desk.send("plant.setpoint_c", {"seq": 80, "value": 20}, retained=True).reason == "retained"
    desk.downlink.accepting = True
    assert desk.send("plant.setpoint_c", {"seq": 79, "value": 20}).result == "ok"
    assert desk.send("plant.setpoint_c", {"seq": 80, "value": 20}).result == "ok"
    assert desk.writes == [("plant.setpoint_c", 22.5), ("plant.setpoint_c", 20), ("plant.setpoint_c", 20)]


def test_a_replay_while_the_write_runs_waits_for_its_outcome(snapshot: Snapshot) -> None:
    release = threading.Event()
    writes: list[Value] = []
    acks: list[Ack] = []

    def submit(var: Variable, value: Value) -> Future[None]:
        writes.append(value)
        fut: Future[None] = Future()
        threading.Thread(target=lambda: (release.wait(5), fut.set_result(None))).start()
        return fut

    dl = Downlink("t", WriteRouter(lambda: snapshot, submit_item=submit))
    raw = json.dumps({"seq": 5, "value": 21.0}).encode()
    dl.handle("plant.setpoint_c", raw, False, acks.append)
    dl.handle("plant.setpoint_c", raw, False, acks.append)
    assert acks == [] and writes == [21.0]
    release.set()
    deadline = threading.Event()
    for _ in range(500):
        if len(acks) == 2:
            break
        deadline.wait(0.01)
    assert [(a.seq, a.result) for a in acks] == [(5, "ok"), (5, "ok")] and writes == [21.0]


def test_seen_seqs_survive_a_restart(snapshot: Snapshot, tmp_path: Path) -> None:
    from edge_gateway.delivery.ledger import Entry

    path = tmp_path / "commands" / "t.seqs"
    desk = Desk(snapshot, ledger=SeqLedger(path, capacity=50))
    assert desk.send("plant.setpoint_c", {"seq": 1, "value": 20}).result == "ok"
    assert desk.send("plant.setpoint_c", {"seq": 2, "value": 4000.0}).reason == "out_of_range"
    desk.downlink.close()
    led = SeqLedger(path, capacity=50)
    led.put(3, Entry("fp", "plant.setpoint_c", "pending", "none"))  # the process dies mid-write
    led.close()
    again = Desk(snapshot, ledger=SeqLedger(path, capacity=50))
    assert again.send("plant.setpoint_c", {"seq": 1, "value": 20}).result == "ok"
    assert again.send("plant.setpoint_c", {"seq": 2, "value": 4000.0}).reason == "out_of_range"
    assert again.writes == []
    # the window is bounded: the oldest seqs are forgotten, and the file is compacted
    for seq in range(100, 400):
        again.send("plant.setpoint_c", {"seq": seq, "value": 4000.0})
    assert len(again.downlink.ledger) == 50 and len(path.read_text().splitlines()) <= 2 * 50 + 64
    assert again.send("plant.setpoint_c", {"seq": 1, "value": 20}).result == "ok"
    assert again.writes == [("plant.setpoint_c", 20)]


def test_interrupted_write_is_not_run_again_after_a_restart(snapshot: Snapshot, tmp_path: Path) -> None:
    path = tmp_path / "t.seqs"
    first = Desk(snapshot, ledger=SeqLedger(path))
    # the line never answers: the process dies
    first.downlink._writes = WriteRouter(lambda: snapshot, submit_item=lambda var, value: Future())
    first.downlink.handle("plant.setpoint_c", json.dumps({"seq": 9, "value": 20}).encode(), False, lambda a: None)
    again = Desk(snapshot, ledger=SeqLedger(path))
    ack = again.send("plant.setpoint_c", {"seq": 9, "value": 20})
    assert (ack.result, ack.reason) == ("fail", "interrupted") and again.writes == []


def test_refusals_are_counted_all_but_logged_at_a_rate_limit(
    snapshot: Snapshot, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_gateway.delivery.commands import LogLimit

    now = [1000.0]
    desk = Desk(snapshot)
    desk.downlink.log_limit = LogLimit(first=10, every=60.0, clock=lambda: now[0])
    labels = {"connector": "t", "result": "fail", "reason": "unknown_tag"}
    before = metric("connector_cmd_total", labels)
    with caplog.at_level(logging.WARNING, logger="edge_gateway.delivery.commands"):
        for seq in range(3245):
            desk.send("plant.nope", {"seq": seq, "value": 1})
        assert len(caplog.records) == 10
        now[0] += 61
        desk.downlink.expire()  # the MQTT thread's tick
    assert metric("connector_cmd_total", labels) == before + 3245
    assert len(caplog.records) == 11
    assert "3235 more refused commands" in caplog.records[-1].getMessage()
    assert "unknown_tag 3235" in caplog.records[-1].getMessage()
    with caplog.at_level(logging.WARNING, logger="edge_gateway.delivery.commands"):
        desk.send("plant.nope", {"seq": 99999, "value": 1})
    assert len(caplog.records) == 12  # a new interval logs again


def test_an_exception_inside_validation_is_a_refusal(snapshot: Snapshot) -> None:
    def broken() -> Snapshot:
        raise KeyError("boom")

    acks: list[Ack] = []
    dl = Downlink("t", WriteRouter(broken))
    dl.handle("plant.setpoint_c", json.dumps({"seq": 4, "value": 1}).encode(), False, acks.append)
    assert [(a.seq, a.result, a.reason) for a in acks] == [(4, "fail", "internal")]
