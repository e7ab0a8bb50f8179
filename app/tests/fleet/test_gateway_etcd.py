"""Real gateways configured from a real etcd (testkit_etcd.Etcd): the demo plant of tests/runtime/plant.py
(PLC simulator, pty line, Mosquitto), each gateway on its own prefix, `--config etcd://…/PREFIX`.

What is asserted: every gateway applies a push and reports etcd's revision; a revision written behind
`edge-cfg push`'s back that does not validate is refused by the gateway (the old configuration keeps
polling, the status key shows the problems, `sys.cfg_rollback` reaches the cloud) and a rollback
restores; RBAC keeps a gateway's credentials to its own prefix; a compaction past the gateway's revision
is a full resync; a gateway restarted with etcd down runs on its cache and says so, then catches up; on
a 3-member cluster a killed leader loses no revision and a 30 s outage of every member stops neither
polling nor delivery."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.config.etcd.store import (
    EtcdUnavailable,
    PermissionDenied,
    Store,
    config_prefix,
    make_meta,
    read_tables,
)
from edge_gateway.testkit import LOOPBACK
from edge_gateway.testkit_etcd import Etcd
from tests.consumer import BatchSubscriber

from ..runtime.plant import BIN, Plant, latest

NEW_TAG = """
- tag: plant.level_raw
  driver_id: plc1
  address: { type: holding, addr: 30 }
  datatype: uint16
"""


def wait(predicate: Callable[[], Any], timeout: float, what: str, plant: Plant | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass  # /metrics or the control socket not up yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{plant.log_tail() if plant else ''}")


def push(store: Store, directory: Path, message: str = "test") -> int:
    """What `edge-cfg push` does after its lint: one txn guarded by the revision it read."""
    base = store.snapshot()
    rev = store.push(read_tables(directory), base.revision, make_meta(message), base=base)
    assert rev is not None
    return rev


def edge_cfg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "edge-cfg"), *args], capture_output=True, text=True, timeout=60, check=False)


def edge_ctl_status(plant: Plant) -> str:
    done = subprocess.run(
        [str(BIN / "edge-ctl"), "--socket", plant.control, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout


def raw_put(store: Store, key: str, text: str) -> int:
    """A write behind edge-cfg's back (no lint, no _meta): etcd's own kv/put."""
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    answer = store.call("kv/put", {"key": b64(key), "value": b64(text)})
    return int(answer["header"]["revision"])


def gateway_args(etcd: Etcd, plant: Plant, gw: str, user_file: Path | None = None) -> list[str]:
    args = ["--config", etcd.gateway_url(gw), "--state-dir", str(plant.tmp / "state")]
    if user_file is not None:
        args += ["--etcd-user", gw, "--etcd-password-file", str(user_file)]
    return args


def status_key(etcd: Etcd, gw: str) -> dict[str, Any]:
    with etcd.store() as s:
        for entry in s.fleet():
            if entry.gateway_id == gw:
                return {"present": entry.present, **(entry.status or {})}
    return {"present": False}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    with Etcd(workdir=tmp_path / "etcd") as e:
        yield e


@pytest.fixture
def plants(tmp_path: Path) -> Iterator[list[Plant]]:
    made: list[Plant] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            made.append(Plant(tmp_path / name))
        yield made
    finally:
        for p in made:
            p.stop()


def test_push_reaches_every_gateway_and_a_bad_revision_is_refused_then_rolled_back(
    etcd: Etcd, plants: list[Plant]
) -> None:
    ids = ["gw-a", "gw-b"]
    passwords = etcd.enable_auth(gateways=ids)
    revs = {}
    with etcd.store(config_prefix("gw-a")) as sa, etcd.store(config_prefix("gw-b")) as sb:
        stores = {"gw-a": sa, "gw-b": sb}
        for gw, plant in zip(ids, plants, strict=True):
            revs[gw] = push(stores[gw], plant.cfg)
        with BatchSubscriber(LOOPBACK, plants[0].broker.port) as sub:
            for gw, plant in zip(ids, plants, strict=True):
                plant.start_gateway(args=gateway_args(etcd, plant, gw, passwords[gw]))
            for gw, plant in zip(ids, plants, strict=True):
                plant.wait_ready()
                assert plant.metric("cfg_revision_current") == revs[gw]
                assert plant.metric("cfg_source_connected") == 1
                wait(lambda gw=gw: status_key(etcd, gw).get("applied_revision") == revs[gw], 20, "status", plant)
                assert status_key(etcd, gw)["present"] is True

            # One `edge-cfg push` per gateway adds a tag; each applies it as the revision etcd gave the push.
            for gw, plant in zip(ids, plants, strict=True):
                plant.sim.ctl(op="set", unit=1, table="holding", addr=30, value=777)
                plant.edit("variables.yml", append=NEW_TAG)
                done = edge_cfg("push", str(plant.cfg), etcd.gateway_url(gw), *etcd.cli_args(), "-m", "a tag")
                assert done.returncode == 0, done.stderr
                revs[gw] = stores[gw].snapshot().config_revision
                assert f"revision {revs[gw]}" in done.stdout + done.stderr
            for gw, plant in zip(ids, plants, strict=True):
                wait(lambda p=plant, gw=gw: p.metric("cfg_revision_current") == revs[gw], 30, "applied", plant)
                assert plant.ctl("status")["config_source"]["applied_revision"] == revs[gw]
            assert sub.wait_for(lambda s: latest(s).get("plant.level_raw", {}).get("value") == 777, 30)

            # A schema error written with a raw client: refused, the old configuration keeps polling.
            a = plants[0]
            bad_text = "- tag: x\n  driver_id: plc1\n  datatype: nope\n"
            bad = raw_put(sa, f"{config_prefix('gw-a')}/variables.yml", bad_text)
            wait(lambda: status_key(etcd, "gw-a").get("rejected_revision") == bad, 30, "the refusal", a)
            st = status_key(etcd, "gw-a")
            assert st["applied_revision"] == revs["gw-a"], st
            assert st["problems"] and all(p.startswith("variables.yml:") for p in st["problems"]), st
            assert a.metric("cfg_invalid_total") == 1
            assert a.metric("cfg_revision_current") == revs["gw-a"]
            assert sub.wait_for(lambda s: any(f["tag"] == "sys.cfg_rollback" for f in s.frames()), 30)
            refused = next(f for f in sub.frames() if f["tag"] == "sys.cfg_rollback")
            assert refused["value"] == str(bad), refused
            n = len(sub.frames())
            assert sub.wait_for(lambda s: sum(f["tag"] == "plant.level_raw" for f in s.frames()[n:]) >= 3, 20)
            assert status_key(etcd, "gw-b").get("rejected_revision") is None  # the other prefix is untouched
            text = edge_ctl_status(a)
            assert f"refused revision {bad} (invalid)" in text and "- variables.yml:" in text, text

            # Rollback: the tables as they were, as a new revision; the gateway applies it.
            back = sa.rollback(revs["gw-a"], meta=make_meta("rollback"))
            assert back is not None and back > bad
            wait(lambda: a.metric("cfg_revision_current") == back, 30, "the rollback applied", a)
            wait(lambda: status_key(etcd, "gw-a").get("rejected_revision") is None, 20, "status after rollback", a)
            assert a.metric("cfg_apply_total", {"result": "unchanged"}) >= 1  # same content as the one running

            # A valid revision that fails while applying (b's metrics port is taken): rolled back, the old
            # one keeps serving, the status key says `rollback` with the reason.
            b = plants[1]
            with socket.socket() as taken:
                taken.bind((LOOPBACK, 0))
                taken.listen()
                port = taken.getsockname()[1]
                b.edit("gateway.yml", (f"127.0.0.1:{b.metrics_port}", f"127.0.0.1:{port}"))
                failed = push(sb, b.cfg)
                wait(lambda: status_key(etcd, "gw-b").get("rejected_revision") == failed, 30, "the rollback", b)
            st = status_key(etcd, "gw-b")
            assert st["rejected_result"] == "rollback" and "Address already in use" in st["problems"][0], st
            assert b.metric("cfg_rollback_total") == 1 and b.metric("cfg_revision_current") == revs["gw-b"]

    # RBAC: gateway a's user reads its own prefix and not b's.
    own = Store(etcd.store(config_prefix("gw-a")).url, etcd.creds("gw-a", passwords["gw-a"]))
    other = Store(etcd.store(config_prefix("gw-b")).url, etcd.creds("gw-a", passwords["gw-a"]))
    try:
        assert own.snapshot().tables
        with pytest.raises(PermissionDenied):
            other.snapshot()
    finally:
        own.close()
        other.close()

    # Started with a's credentials on b's prefix: refused, and with no cache it cannot start.
    c = plants[1]
    wrong = subprocess.run(
        [str(BIN / "edge-gateway"), "run", "--config", etcd.gateway_url("gw-b")]
        + ["--state-dir", str(c.tmp / "state-wrong"), "--etcd-user", "gw-a"]
        + ["--etcd-password-file", str(passwords["gw-a"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 1 and "permission denied" in (wrong.stdout + wrong.stderr), wrong

    # A clean stop revokes the presence lease: the gateway leaves the fleet at once, its status stays.
    b = plants[1]
    assert b.gw is not None
    b.gw.send_signal(signal.SIGTERM)
    assert b.gw.wait(30) == 0
    st = status_key(etcd, "gw-b")
    assert st["present"] is False and st["applied_revision"] == revs["gw-b"]


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def test_compaction_is_a_full_resync_and_a_restart_with_etcd_down_runs_on_the_cache(etcd: Etcd, plant: Plant) -> None:
    with etcd.store(config_prefix("gw-1")) as s, BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        push(s, plant.cfg)
        plant.start_gateway(args=gateway_args(etcd, plant, "gw-1"))
        plant.wait_ready()
        assert plant.gw is not None

        # One push that renames a driver in drivers.yml and in every tag of variables.yml: either table
        # alone is invalid, so a gateway that applied half of the txn would refuse it. It applies it whole.
        for name in ("drivers.yml", "variables.yml"):
            f = plant.cfg / name
            f.write_text(f.read_text().replace("plc1", "plc9"))
        both = push(s, plant.cfg)
        wait(lambda: plant.metric("cfg_revision_current") == both, 30, "the two-table revision", plant)
        assert plant.metric("cfg_invalid_total") == 0
        assert any("plc9" in line["drivers"] for line in plant.ctl("status")["lines"].values())
        for name in ("drivers.yml", "variables.yml"):
            f = plant.cfg / name
            f.write_text(f.read_text().replace("plc9", "plc1"))
        first = push(s, plant.cfg)
        wait(lambda: plant.metric("cfg_revision_current") == first, 30, "back to plc1", plant)

        # The watch breaks (etcd down), the gateway is frozen while etcd comes back, two revisions are
        # pushed and compacted away: resuming the watch from its revision is refused, so it re-reads all.
        etcd.stop_member(0)
        wait(lambda: plant.metric("cfg_source_connected") == 0, 30, "the outage seen", plant)
        os.kill(plant.gw.pid, signal.SIGSTOP)
        try:
            etcd.start_member(0)
            etcd.wait_ready()
            plant.edit("variables.yml", append=NEW_TAG)
            push(s, plant.cfg)
            plant.edit("drivers.yml", ("polling: 200ms", "polling: 300ms"))
            last = push(s, plant.cfg)
            etcd.compact()
        finally:
            os.kill(plant.gw.pid, signal.SIGCONT)
        wait(lambda: plant.metric("cfg_revision_current") == last, 60, "the resync", plant)
        assert plant.metric("cfg_source_resync_total", {"reason": "compacted"}) >= 1
        assert plant.metric("cfg_source_connected") == 1
        assert sub.wait_for(lambda s: "plant.level_raw" in latest(s), 30)

        # Restarted while etcd is down: it runs on the cached revision, says so, and keeps delivering.
        plant.gw.send_signal(signal.SIGTERM)
        assert plant.gw.wait(30) == 0
        etcd.stop_member(0)
        plant.start_gateway(args=gateway_args(etcd, plant, "gw-1"))
        plant.wait_ready()
        status = plant.ctl("status")
        src = status["config_source"]
        assert src["from_cache"] is True and src["connected"] is False and src["applied_revision"] == last, src
        assert any("configuration store unreachable" in r for r in status["health"]["reasons"]), status["health"]
        assert plant.metric("cfg_source_cache") == 1 and plant.metric("cfg_revision_current") == last
        text = edge_ctl_status(plant)
        assert "UNREACHABLE" in text and "running on its CACHE" in text and f"revision {last}" in text, text
        n = len(sub.frames())
        assert sub.wait_for(lambda s: sum(f["tag"] == "plant.level_raw" for f in s.frames()[n:]) >= 3, 30)

        # etcd is back: the gateway reconnects (backoff), leaves the cache and catches up with a new push.
        etcd.start_member(0)
        etcd.wait_ready()
        wait(lambda: plant.metric("cfg_source_cache") == 0, 60, "reconnected", plant)
        plant.edit("drivers.yml", ("polling: 300ms", "polling: 200ms"))
        newest = push(s, plant.cfg)
        wait(lambda: plant.metric("cfg_revision_current") == newest, 30, "caught up", plant)
        assert plant.ctl("status")["config_source"]["connected"] is True


def push_through(store: Store, directory: Path, timeout: float = 30.0) -> int:
    """push, retried while the cluster elects a new leader (EtcdUnavailable: no leader yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return push(store, directory)
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_three_members_a_killed_leader_loses_no_revision_and_a_30s_outage_stops_nothing(
    tmp_path: Path, plant: Plant
) -> None:
    with (
        Etcd(members=3, workdir=tmp_path / "etcd3") as etcd,
        etcd.store(config_prefix("gw-1")) as s,
        BatchSubscriber(LOOPBACK, plant.broker.port) as sub,
    ):
        push(s, plant.cfg)
        plant.start_gateway(args=gateway_args(etcd, plant, "gw-1"))
        plant.wait_ready()

        # The leader dies between two pushes while the gateway watches: the client moves on to another
        # member and resumes from the revision after the last it saw; the last push is what runs.
        plant.edit("drivers.yml", ("polling: 200ms", "polling: 250ms"))
        push(s, plant.cfg)
        leader = etcd.leader()
        etcd.kill_member(leader)
        plant.edit("variables.yml", append=NEW_TAG)
        push_through(s, plant.cfg)
        plant.edit("drivers.yml", ("polling: 250ms", "polling: 200ms"))
        last = push_through(s, plant.cfg)
        wait(lambda: plant.metric("cfg_revision_current") == last, 60, "the last revision", plant)
        assert plant.metric("cfg_invalid_total") == 0 and plant.metric("cfg_rollback_total") == 0
        assert sub.wait_for(lambda s: "plant.level_raw" in latest(s), 30)
        etcd.start_member(leader)
        etcd.wait_ready()

        # Every member down for 30 s: polling and delivery go on; then the gateway catches up.
        etcd.stop()
        wait(lambda: plant.metric("cfg_source_connected") == 0, 30, "the outage seen", plant)
        committed, n = plant.committed(), len(sub.frames())
        time.sleep(30)
        assert plant.committed() > committed
        assert sub.wait_for(lambda s: sum(f["tag"] == "plant.level_raw" for f in s.frames()[n:]) >= 10, 10)
        assert plant.ctl("status")["config_source"]["applied_revision"] == last
        etcd.start()
        plant.edit("drivers.yml", ("polling: 200ms", "polling: 300ms"))
        newest = push_through(s, plant.cfg)
        wait(lambda: plant.metric("cfg_revision_current") == newest, 60, "caught up", plant)
        assert plant.metric("cfg_source_connected") == 1


def test_a_bootstrap_directory_over_tls_with_a_client_certificate(tmp_path: Path, plant: Plant) -> None:
    with Etcd(workdir=tmp_path / "etcd-tls", tls=True) as etcd, etcd.store(config_prefix("gw-t")) as s:
        assert etcd.certs is not None
        rev = push(s, plant.cfg)
        cert, key = etcd.certs.client_pair("gw-t")
        boot = tmp_path / "boot"
        boot.mkdir()
        (boot / "gateway.yml").write_text(
            "config_source:\n"
            "  etcd:\n"
            f"    endpoints: [{etcd.endpoints}]\n"
            "    prefix: /edge/config/v1/{gateway_id}\n"
            "    gateway_id: gw-t\n"
            f"    ca: {etcd.certs.ca}\n"
            f"    cert: {cert}\n"
            f"    key: {key}\n"
            f"metrics: {{ listen: {LOOPBACK}:{plant.metrics_port} }}\n"
        )
        plant.start_gateway(notify=True, args=["--config", str(boot), "--state-dir", str(tmp_path / "state")])
        plant.wait_ready()
        assert plant.metric("cfg_revision_current") == rev
        got = plant.notifications(lambda m: any(f"etcd rev {rev}" in x for x in m), 30)
        lines = [line for m in got for line in m.splitlines()]
        assert any(x.startswith("STATUS=") and f"etcd rev {rev}," in x for x in lines), got
        wait(lambda: status_key(etcd, "gw-t").get("applied_revision") == rev, 20, "the status key", plant)
        assert (tmp_path / "state" / "etcd" / f"rev-{rev}" / "variables.yml").read_text() == (
            plant.cfg / "variables.yml"
        ).read_text()
