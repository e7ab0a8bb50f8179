"""The uplink against a real Mosquitto, on a real WAL: order, acks, outages, downgrade, TLS, commands."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.config.loader import load_snapshot
from edge_gateway.config.model import TlsFiles
from edge_gateway.metrics import value as metric
from edge_gateway.testkit import Mosquitto, require
from tests.consumer import BatchSubscriber

from .conftest import Pipeline, Pki, connector

CONFIG = Path(__file__).resolve().parents[3] / "config"


def first_occurrences(seqs: list[int]) -> list[int]:
    """What a consumer keeps after dropping duplicates by seq (a resend after a reconnect)."""
    out: list[int] = []
    for s in seqs:
        if not out or s > out[-1]:
            out.append(s)
    return out


@pytest.mark.parametrize(("qos", "compression"), [(2, "zstd"), (1, "none"), (0, "zstd")])
def test_batches_arrive_in_order_with_properties(
    mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber], qos: int,
    compression: str,
) -> None:  # fmt: skip
    sub = subscriber(mosquitto.port)
    p = pipeline(connector(mosquitto.port, qos=qos, compression=compression, max_bytes=4096))
    p.publish(700)
    assert p.wait_acked(p.published[-1])
    assert sub.wait_for(lambda s: len(s.seqs()) >= 700, 10)
    assert sub.seqs() == p.published  # every frame, once, in order (no gaps, no reordering)
    assert [f["value"] for f in sub.frames()] == [float(i) for i in range(700)]
    assert all("dup" not in f for f in sub.frames())
    for m in sub.messages:
        assert m.topic == "/edge/t1/gw1/batch"
        assert m.content_type == "application/json"
        assert m.props["encoding"] == ("zstd" if compression == "zstd" else "identity")
        seqs = [f["seq"] for f in m.frames]
        assert (int(m.props["seq_first"]), int(m.props["seq_last"]), int(m.props["count"])) == (
            seqs[0],
            seqs[-1],
            len(seqs),
        )
        assert len(m.frames) <= 32
        assert m.props["cover"] == f"{seqs[0]}-{seqs[-1]}"  # no commands in between here
    if compression == "none":
        raw = [len(json.dumps(m.frames, separators=(",", ":"))) for m in sub.messages]
        assert max(raw) <= 4096  # max_bytes bounds the uncompressed JSON
    assert sub.status[0] == b"online"
    stats = p.runner.stats() if p.runner else {}
    assert stats["frames"] == 700 and stats["lag"] == 0 and stats["inflight"] == 0
    p.close()
    assert sub.wait_for(lambda s: s.status[-1:] == [b"offline"], 5)  # published before a clean stop


def test_batch_of_one_goes_to_the_frame_topic(
    mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber]
) -> None:
    sub = subscriber(mosquitto.port)
    p = pipeline(connector(mosquitto.port, batch=1, compression="none"))
    p.publish(12, tag="one.t")
    assert sub.wait_for(lambda s: len(s.seqs()) >= 12, 10)
    assert [m.topic for m in sub.messages] == [f"/edge/t1/gw1/one.t{i % 10}" for i in range(12)]
    assert sub.seqs() == p.published
    assert all(m.props["count"] == "1" for m in sub.messages)


def test_broker_outage_wal_grows_then_everything_is_delivered(
    persistent_mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber]
) -> None:
    broker = persistent_mosquitto
    sub = subscriber(broker.port, client_id="cloud-consumer", session_expiry=3600)
    p = pipeline(connector(broker.port))
    assert p.runner is not None
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            p.publish(50)
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert sub.wait_for(lambda s: len(s.seqs()) > 500, 10)
        broker.stop()
        deadline = time.monotonic() + 3.0  # a short outage; hil-tests do the 30 s one
        lags = []
        while time.monotonic() < deadline:
            lags.append(p.runner.cursor.lag)
            time.sleep(0.2)
        assert not p.runner.connected
        assert lags[-1] > lags[0] > 0  # the WAL holds what the broker cannot take
        broker.start()
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join()
    assert p.wait_acked(p.published[-1], 30)
    assert sub.wait_for(lambda s: first_occurrences(s.seqs())[-1:] == p.published[-1:], 20)
    assert first_occurrences(sub.seqs()) == p.published  # nothing lost, nothing out of order
    assert p.runner.connections >= 2 and metric("connector_retry_total", {"connector": "cloud", "what": "connect"})


def test_restart_resumes_from_the_ack_cursor(
    mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber], tmp_path: Path
) -> None:
    sub = subscriber(mosquitto.port)
    conn = connector(mosquitto.port)
    first = pipeline(conn, name="wal")
    first.publish(100)
    assert first.wait_acked(first.published[-1])
    mosquitto.stop()
    first.publish(300, start_value=100)  # committed, never sent: the broker is gone
    assert first.runner is not None
    deadline = time.monotonic() + 5
    while first.runner.cursor.lag < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.close()  # the process ends with 300 unacknowledged frames in the WAL
    mosquitto.start()
    sub.stop()
    sub = subscriber(mosquitto.port)
    second = pipeline(conn, name="wal")
    assert second.wait_acked(first.published[-1])
    assert sub.wait_for(lambda s: len(s.seqs()) >= 300, 10)
    assert sub.seqs() == first.published[100:]  # exactly the unacknowledged ones, in order
    assert [f["value"] for f in sub.frames()] == [float(100 + i) for i in range(300)]


def test_qos1_only_broker_downgrades_and_marks_dup(
    tmp_path: Path, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber]
) -> None:
    with Mosquitto(workdir=tmp_path / "q1", extra=["max_qos 1"]) as broker:
        sub = subscriber(broker.port)
        before = metric("connector_qos_downgrade_total", {"connector": "cloud"})
        p = pipeline(connector(broker.port, qos=2))
        p.publish(100)
        assert p.wait_acked(p.published[-1])
        assert p.runner is not None and p.runner.qos == 1 and p.runner.connections == 1
        assert sub.wait_for(lambda s: set(p.published) <= set(s.seqs()), 10)
        assert metric("connector_qos_downgrade_total", {"connector": "cloud"}) == before + 1
        data = [f for f in sub.frames() if f["tag"] != "sys.qos_downgrade"]
        assert [f["seq"] for f in data] == p.published
        assert all(f["dup"] == "possible" for f in data)
        assert all(m.props.get("dup") == "possible" for m in sub.messages)
        marks = [f for f in sub.frames() if f["tag"] == "sys.qos_downgrade"]  # recorded in the WAL, then sent
        assert len(marks) == 1 and marks[0]["value"] == 1
        assert marks[0]["meta"]["configured"] == 2 and marks[0]["meta"]["granted"] == 1


def test_mutual_tls_with_password_file_and_manual_reconnect(
    tmp_path: Path, pki: Pki, pipeline: Callable[..., Pipeline]
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run([require("mosquitto_passwd"), "-b", "-c", str(passwd), "edge", "s3cret"], check=True)
    tls_broker = Mosquitto(
        workdir=tmp_path / "tls",
        extra=[
            f"cafile {pki.ca}",
            f"certfile {pki.cert('server')}",
            f"keyfile {pki.key('server')}",
            "require_certificate true",
            f"password_file {passwd}",
            "allow_anonymous false",
            "user root",  # test-only: mosquitto would drop to a user who cannot read tmp_path
        ],
    ).start()
    try:
        secret = tmp_path / "mqtt.pass"
        secret.write_text("wrong\n")
        tls = TlsFiles(pki.ca, pki.cert("client"), pki.key("client"))
        conn = connector(tls_broker.port, scheme="tls", username="edge", password_file=str(secret), tls=tls)
        p = pipeline(conn)
        assert p.runner is not None
        deadline = time.monotonic() + 10
        while "Not authorized" not in str(p.runner.last_error) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "Not authorized" in str(p.runner.last_error)  # TLS is up, the password is refused: retried
        p.publish(50)
        secret.write_text("s3cret\n")  # read again at the next attempt: rotation needs no restart
        assert p.wait_acked(p.published[-1])  # PUBCOMPs came back over mutual TLS
        p.runner.reconnect()  # a fresh client: credentials and TLS files are read again
        p.publish(50, start_value=50)
        assert p.wait_acked(p.published[-1])
        assert p.runner.connections == 2 and p.runner.connected
    finally:
        tls_broker.stop()


def test_commands_are_acked_through_the_broker(
    mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber]
) -> None:
    """Refusals travel the whole MQTT path (writes to a device are in the gateway end-to-end tests);
    the seeds' short topic forms are configured here."""
    sub = subscriber(mosquitto.port)
    conn = connector(mosquitto.port, cmd_topic="/edge/cmd/{tag}", ack_topic="/edge/ack/{seq}")
    p = pipeline(conn, commands=load_snapshot(CONFIG))
    assert p.runner is not None
    deadline = time.monotonic() + 10
    while not p.runner.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let the SUBACK arrive before the commands
    sent: dict[str, tuple[str, Any]] = {
        "1": ("plant.flow_m3h", {"seq": 1, "value": 3}),
        "2": ("plant.nope", {"seq": 2, "value": 3}),
        "3": ("plant.setpoint_c", b'{"seq": 3, "value": '),
        "4": ("plant.setpoint_c", {"seq": 4, "value": 99999}),
        "5": ("plant.setpoint_c", {"seq": 5, "value": 20}),  # valid, but this process has no line
    }
    for tag, body in sent.values():
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        sub.publish(f"/edge/cmd/{tag}", payload)
    assert sub.wait_for(lambda s: len(s.acks) == 5, 10), sub.acks
    assert {k: v["result"] for k, v in sub.acks.items()} == dict.fromkeys(sent, "fail")
    errors = {k: v["error"] for k, v in sub.acks.items()}
    assert "access R" in errors["1"] and "unknown tag" in errors["2"]
    assert "not JSON" in errors["3"] and "outside int16" in errors["4"] and "no line" in errors["5"]


def test_hostile_and_retained_commands_through_the_broker_never_stop_the_uplink(
    mosquitto: Mosquitto, pipeline: Callable[..., Pipeline], subscriber: Callable[..., BatchSubscriber]
) -> None:
    """Issue 14 (6, 7): a deeply nested command used to end the uplink thread (RecursionError in
    on_message); a retained command published while we are subscribed lost its retain flag on the
    way (no retain-as-published) and was executed."""
    sub = subscriber(mosquitto.port)
    p = pipeline(connector(mosquitto.port), commands=load_snapshot(CONFIG))
    assert p.runner is not None
    cmd = "/edge/t1/gw1/cmd/plant.setpoint_c"
    deadline = time.monotonic() + 10
    while "9" not in sub.acks and time.monotonic() < deadline:  # the subscription is up once a probe is acked
        sub.publish(cmd, b'{"seq":9,"value":"probe"}')
        sub.wait_for(lambda s: "9" in s.acks, 0.5)
    sub.publish(cmd, b'{"seq":1,"value":1,"meta":' + b"[" * 60_000)
    sub.publish(cmd, b'{"seq":2,"value":1,"meta":{"blob":"' + b"x" * (10 << 20) + b'"}}')
    sub.publish(cmd, json.dumps({"seq": 3, "value": 20}).encode(), retain=True)
    sub.publish(cmd, b'{"seq":4,"value":1,"meta":"\\ud800' + b"9" * 5000 + b'"}')
    assert sub.wait_for(lambda s: {"1", "2", "3", "4"} <= s.acks.keys(), 20), sub.acks
    assert "nests deeper" in sub.acks["1"]["error"]
    assert "larger than 65536" in sub.acks["2"]["error"]
    assert "retained" in sub.acks["3"]["error"]  # not "no line accepts writes": it never got that far
    assert all(a["result"] == "fail" for a in sub.acks.values())
    sub.publish(cmd, b"", retain=True)  # clear the retained command
    assert p.runner.is_alive()
    p.publish(20)
    assert p.wait_acked(p.published[-1])  # still delivering
