"""The 3-member fixture the fault tests build on: a killed leader, a member restarted, the whole cluster
stopped and started again; the store and its watch carry on without missing a revision."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from edge_gateway.config.etcd.store import Change, Store, config_prefix, make_meta
from edge_gateway.config.etcd.url import EtcdUrl
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


def test_no_quorum_is_etcd_unavailable(etcd3: Etcd, tmp_path: Path) -> None:
    """Two of three members down: the one left cannot commit nor serve a linearizable read; push says
    etcd is unreachable (exit 2), writes nothing, and works again once a second member is back."""
    edge_cfg = str(Path(sys.executable).parent / "edge-cfg")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    for name, text in {
        "endpoints.yml": "plc:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 15020\n",
        "drivers.yml": "u0:\n  kind: static\n  endpoint_id: plc\n  proto: modbus\n  cfg: { unit_id: 1 }\n",
        "variables.yml": "- tag: a.b\n  driver_id: u0\n  address: { type: holding, addr: 0 }\n  datatype: uint16\n",
        "connector.yml": "cloud:\n  kind: mqtt5\n  endpoint: tcp://127.0.0.1:1883\n  tenant: t\n  device: gw\n",
    }.items():
        (cfg / name).write_text(text)
    etcd3.stop_member(1)
    etcd3.stop_member(2)
    url = etcd3.gateway_url("gw-01")
    r = subprocess.run([edge_cfg, "push", str(cfg), url, "--timeout", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "etcd unreachable" in r.stderr and "Traceback" not in r.stderr, r
    etcd3.start_member(1)
    etcd3.wait_ready(members=[0, 1])
    with Store(EtcdUrl.parse(url), timeout=5) as s:
        assert s.snapshot().tables == {}
    r = subprocess.run([edge_cfg, "push", str(cfg), url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r
