"""The store against a real etcd: snapshot, guarded push, watch (compaction), history, rollback, fleet."""

from __future__ import annotations

import threading

import pytest

from edge_gateway.config.etcd.store import (
    Change,
    Compacted,
    Conflict,
    EtcdUnavailable,
    Store,
    config_prefix,
    make_meta,
    table_key,
)
from edge_gateway.config.etcd.url import EtcdUrl
from edge_gateway.testkit import free_port
from edge_gateway.testkit_etcd import Etcd

PREFIX = config_prefix("gw-01")


def test_push_and_snapshot_round_trip(etcd: Etcd) -> None:
    with etcd.store(PREFIX) as s:
        empty = s.snapshot()
        assert (empty.tables, empty.meta, empty.config_revision) == ({}, None, 0)
        text = "# comment kept\nplc:\n  url: tcp://127.0.0.1:502  # ü\n"
        rev = s.push({"endpoints": text, "drivers": "{}\n"}, empty.revision, make_meta("first"), base=empty)
        snap = s.snapshot()
        assert snap.tables == {"endpoints": text, "drivers": "{}\n"}
        assert snap.config_revision == rev and snap.revision >= rev
        assert snap.meta is not None and snap.meta["message"] == "first"
        # The same tables again: nothing written.
        assert s.push(snap.tables, snap.revision, make_meta("again"), base=snap) is None
        assert s.snapshot().config_revision == rev
        # A table not given is deleted, in the same revision as the rest.
        rev2 = s.push({"endpoints": text}, snap.revision, make_meta("drop drivers"))
        assert s.snapshot().tables == {"endpoints": text}
        assert s.snapshot(rev).tables == {"endpoints": text, "drivers": "{}\n"}
        assert rev2 is not None and rev2 > rev


def test_guarded_push_conflicts(etcd: Etcd) -> None:
    with etcd.store(PREFIX) as s, etcd.store(PREFIX) as other:
        base = s.snapshot()
        other.push({"endpoints": "a: 1\n"}, base.revision, make_meta("someone else"))
        with pytest.raises(Conflict) as e:
            s.push({"endpoints": "a: 2\n"}, base.revision, make_meta("stale"), base=base)
        assert e.value.current_revision > base.revision
        assert s.snapshot().tables == {"endpoints": "a: 1\n"}


def test_guard_sees_a_raw_delete(etcd: Etcd) -> None:
    """A table deleted behind edge-cfg's back (no _meta) still fails the guard: compares are exact."""
    with etcd.store(PREFIX) as s:
        rev = s.push({"endpoints": "a: 1\n", "drivers": "b: 1\n"}, 0, make_meta())
        assert rev is not None
        base = s.snapshot()
        s.call("kv/deleterange", {"key": _b64(table_key(PREFIX, "drivers"))})
        with pytest.raises(Conflict):
            s.push({"endpoints": "a: 2\n", "drivers": "b: 1\n"}, base.revision, make_meta(), base=base)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_watch_one_change_per_revision_then_compaction(etcd: Etcd) -> None:
    with etcd.store(PREFIX) as s:
        start = s.snapshot().revision + 1
        revs = []
        for i in range(3):
            snap = s.snapshot()
            revs.append(s.push({"endpoints": f"a: {i}\n", "variables": f"- v{i}\n"}, snap.revision, make_meta(f"{i}")))
        w = s.watch(start)
        got: list[Change] = []
        for change in w:
            got.append(change)
            if len(got) == 3:
                w.close()
        assert [c.revision for c in got] == revs
        assert got[1].tables == {"endpoints": "a: 1\n", "variables": "- v1\n"}
        assert got[2].meta is not None and got[2].meta["message"] == "2"
        etcd.compact()
        with pytest.raises(Compacted) as e:
            next(iter(s.watch(start)))
        assert e.value.compact_revision >= revs[-1]


def test_watch_close_from_another_thread(etcd: Etcd) -> None:
    with etcd.store(PREFIX) as s:
        w = s.watch(s.snapshot().revision + 1)
        done = threading.Event()

        def run() -> None:
            for _ in w:
                pass
            done.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        with etcd.store(PREFIX) as other:
            other.push({"endpoints": "a: 1\n"}, other.revision(), make_meta())
        w.close()
        t.join(10)
        assert done.is_set()


def test_history_and_rollback(etcd: Etcd) -> None:
    with etcd.store(PREFIX) as s:
        r1 = s.push({"endpoints": "a: 1\n", "drivers": "d: 1\n"}, 0, make_meta("one"))
        r2 = s.push({"endpoints": "a: 2\n", "drivers": "d: 1\n"}, s.revision(), make_meta("two"))
        assert r1 and r2
        entries, truncated = s.history()
        assert [(e.revision, e.tables, e.meta and e.meta["message"]) for e in entries] == [
            (r2, ("endpoints",), "two"),
            (r1, ("endpoints", "drivers"), "one"),
        ]
        assert not truncated
        r3 = s.rollback(r1, meta=make_meta("back"))
        assert r3 is not None and s.snapshot().tables == s.snapshot(r1).tables
        assert s.rollback(r1) is None  # already so
        # One table only.
        r4 = s.push({"endpoints": "a: 3\n", "drivers": "d: 3\n"}, s.revision(), make_meta("three"))
        assert r4
        s.rollback(r1, tables=["drivers"], meta=make_meta("drivers back"))
        assert s.snapshot().tables == {"endpoints": "a: 3\n", "drivers": "d: 1\n"}


def test_status_presence_fleet(etcd: Etcd) -> None:
    with etcd.store() as s:
        s.put_status("gw-01", {"applied_revision": 7, "health": "ok"})
        p = s.presence("gw-02", ttl=30)
        fleet = {f.gateway_id: f for f in s.fleet()}
        assert fleet["gw-01"].status == {"applied_revision": 7, "health": "ok"} and not fleet["gw-01"].present
        assert fleet["gw-02"].present and fleet["gw-02"].status is None
        assert p.refresh() > 0
        p.revoke()
        assert [f.gateway_id for f in s.fleet()] == ["gw-01"]  # no status, no presence: not in the fleet


def test_unreachable_is_etcd_unavailable() -> None:
    s = Store(EtcdUrl.parse(f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/edge/config/v1/gw"), timeout=1)
    with pytest.raises(EtcdUnavailable, match="etcd unreachable at 127.0.0.1:.*connection refused"):
        s.snapshot()
    with pytest.raises(EtcdUnavailable):
        next(iter(s.watch(1)))


def test_failover_to_the_next_endpoint(etcd3: Etcd) -> None:
    with etcd3.store(PREFIX) as s:
        rev = s.push({"endpoints": "a: 1\n"}, 0, make_meta())
        etcd3.stop_member(0)
        assert s.snapshot().config_revision == rev


def test_quiet_watch_reconnects_past_a_compaction_it_slept_through(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Other prefixes move the revision on and a compaction passes the watcher's start while its prefix is
    quiet: the progress notifications it got meanwhile let it reconnect (member restarted) without a
    spurious Compacted, and it still sees the next change of its own prefix."""
    with Etcd(workdir=tmp_path / "etcd", extra=["--experimental-watch-progress-notify-interval=200ms"]) as etcd:
        with etcd.store(PREFIX) as s, etcd.store(config_prefix("other")) as other:
            w = s.watch(s.revision() + 1, idle_timeout=5)
            got: list[Change] = []
            errors: list[BaseException] = []

            def run() -> None:
                # What the gateway does: on EtcdUnavailable (the only member restarting), watch again from
                # the revision after the last one delivered.
                watch = w
                while not closed.is_set():
                    try:
                        got.extend(watch)
                        return
                    except EtcdUnavailable:
                        threading.Event().wait(0.2)
                        watch = s.watch(watch.next_revision, idle_timeout=5)
                        watches.append(watch)
                    except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                        errors.append(e)
                        return

            closed = threading.Event()
            watches = [w]

            t = threading.Thread(target=run, daemon=True)
            t.start()
            for i in range(5):
                other.push({"endpoints": f"a: {i}\n"}, other.revision(), make_meta())
            moved_to = other.revision()
            for _ in range(200):  # until a progress notification carried the watcher past the writes
                if w.next_revision > moved_to:
                    break
                threading.Event().wait(0.05)
            assert w.next_revision > moved_to
            etcd.compact(moved_to)
            etcd.stop_member(0)
            etcd.start()
            rev = s.push({"endpoints": "mine\n"}, s.revision(), make_meta("mine"))
            for _ in range(200):
                if got or errors:
                    break
                threading.Event().wait(0.05)
            closed.set()
            for watch in watches:
                watch.close()
            t.join(10)
            assert errors == [] and [c.revision for c in got] == [rev]


def test_presence_comes_back_after_its_lease_expired(etcd: Etcd) -> None:
    """A gateway cut off longer than the TTL lost its lease (here: revoked under it); the next refresh()
    takes a new lease and writes the key again."""
    with etcd.store() as s:
        p = s.presence("gw-01", ttl=30, value={"gateway_id": "gw-01", "pid": 1})
        old = p.lease_id
        s.call("kv/lease/revoke", {"ID": old})
        assert [f.gateway_id for f in s.fleet()] == []
        assert p.refresh() > 0 and p.lease_id != old
        (entry,) = s.fleet()
        assert entry.present and entry.presence == {"gateway_id": "gw-01", "pid": 1}
        p.revoke()
