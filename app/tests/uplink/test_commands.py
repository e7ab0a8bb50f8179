"""Command validation against the demo configuration: every refusal is acked and never written."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from edge_gateway.bus.frame import Frame, Kind, Value, now_ms
from edge_gateway.config.loader import load_snapshot
from edge_gateway.config.model import Snapshot, Variable
from edge_gateway.metrics import value as metric
from edge_gateway.uplink.commands import Ack, Downlink

CONFIG = Path(__file__).resolve().parents[3] / "config"


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return load_snapshot(CONFIG)


class Desk:
    """Collects what reached the 'line' and every ack; the line completes writes on its own thread."""

    def __init__(self, snapshot: Snapshot, fail: str | None = None) -> None:
        self.writes: list[tuple[str, Value]] = []
        self.acks: list[Ack] = []
        self.frames: list[Frame] = []
        self.done = threading.Event()
        self.fail = fail
        self.downlink = Downlink("t", lambda: snapshot, self.submit, self.record)

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

    from edge_gateway.uplink.topics import Topics

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
