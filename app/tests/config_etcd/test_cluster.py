"""The 3-member fixture the fault tests build on: a killed leader, a member restarted, the whole cluster
stopped and started again; the store and its watch carry on without missing a revision."""

from __future__ import annotations

import threading

from edge_gateway.config.etcd.store import Change, config_prefix, make_meta
from edge_gateway.testkit_etcd import Etcd

PREFIX = config_prefix("gw-01")


def test_watch_survives_killing_the_leader(etcd3: Etcd) -> None:
    with etcd3.store(PREFIX) as writer, etcd3.store(PREFIX) as reader:
        start = writer.revision() + 1
        w = reader.watch(start, idle_timeout=5)
        got: list[Change] = []
        t = threading.Thread(target=lambda: got.extend(w))
        t.start()
        revs = [writer.push({"endpoints": "a: 0\n"}, writer.revision(), make_meta("0"))]
        leader = etcd3.leader()
        pid = etcd3.nodes[leader].pid
        etcd3.kill_member(leader)
        assert pid is not None and etcd3.nodes[leader].pid is None
        for i in range(1, 4):
            revs.append(writer.push({"endpoints": f"a: {i}\n"}, writer.revision(), make_meta(str(i))))
        assert etcd3.leader() != leader
        etcd3.start_member(leader)
        etcd3.wait_ready(members=[leader])
        revs.append(writer.push({"endpoints": "a: 4\n"}, writer.revision(), make_meta("4")))
        for _ in range(600):  # a bound against a hang, not a timing: the watch delivers or the test fails
            if len(got) >= len(revs) or not t.is_alive():
                break
            threading.Event().wait(0.1)
        w.close()
        t.join(10)
        assert [c.revision for c in got] == revs
        assert [c.tables["endpoints"] for c in got] == [f"a: {i}\n" for i in range(5)]


def test_stop_all_members_and_start_again(etcd3: Etcd) -> None:
    with etcd3.store(PREFIX) as s:
        rev = s.push({"endpoints": "a: 1\n"}, 0, make_meta())
        etcd3.stop()
        assert all(m.pid is None for m in etcd3.nodes)
        etcd3.start()
        assert s.snapshot().config_revision == rev
        assert s.snapshot().tables == {"endpoints": "a: 1\n"}
