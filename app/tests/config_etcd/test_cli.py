"""edge-cfg push/diff/watch/history/rollback/fleet status against a real etcd: exit codes and output."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_gateway.config.cli import main
from edge_gateway.config.etcd.store import config_prefix, make_meta, request_size
from edge_gateway.testkit import free_port
from edge_gateway.testkit_etcd import Etcd

DEMO = Path(__file__).resolve().parents[3] / "config"
EDGE_CFG = str(Path(sys.executable).parent / "edge-cfg")
GW = "gw-01"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    d = tmp_path / "cfg"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("README.md", "examples"))
    return d


def edge_cfg(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_push_diff_history_rollback(etcd: Etcd, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = etcd.gateway_url(GW)
    code, out, err = edge_cfg(capsys, "push", str(cfg), url, "-m", "first")
    assert code == 0, err
    r1 = int(out)
    with etcd.store(config_prefix(GW)) as s:
        snap = s.snapshot()
        assert snap.config_revision == r1
        assert snap.tables["variables"] == (cfg / "variables.yml").read_text()  # byte for byte, comments too
    assert edge_cfg(capsys, "diff", str(cfg), url)[:2] == (0, f"no change (revision {r1})\n")
    code, out, err = edge_cfg(capsys, "push", str(cfg), url)
    assert (code, out.strip()) == (0, str(r1)) and "no change" in err

    edited = (cfg / "endpoints.yml").read_text().replace("port: 15020", "port: 15021")
    (cfg / "endpoints.yml").write_text(edited)
    code, out, _ = edge_cfg(capsys, "diff", str(cfg), url)
    assert code == 0
    assert f"--- {url}/endpoints.yml@{r1}" in out and "-  port: 15020" in out and "+  port: 15021" in out
    assert "variables.yml" not in out
    code, out, err = edge_cfg(capsys, "push", str(cfg), url, "--message", "port 15021")
    assert code == 0 and "+endpoints" in err
    r2 = int(out)

    code, out, _ = edge_cfg(capsys, "history", url)
    lines = out.splitlines()
    assert lines[0].split() == ["REVISION", "WHEN", "WHO", "TABLES", "MESSAGE"]
    assert lines[1].split()[0] == str(r2) and lines[1].endswith("port 15021")
    assert lines[2].split()[0] == str(r1) and "first" in lines[2]

    code, out, err = edge_cfg(capsys, "rollback", url, "--to", f"rev={r1}")
    assert code == 0, (out, err)
    r3 = int(out.splitlines()[-1])
    with etcd.store(config_prefix(GW)) as s:
        assert s.snapshot().tables == s.snapshot(r1).tables
        assert s.snapshot().meta["message"] == f"rollback to {r1}"  # type: ignore[index]
    assert r3 > r2
    code, out, err = edge_cfg(capsys, "rollback", url, "endpoints", "--to", str(r1))
    assert code == 0 and "already" in err
    assert edge_cfg(capsys, "rollback", url, "--to", "rev=999999")[0] == 1  # a future revision
    assert edge_cfg(capsys, "rollback", url, "--to", "rev=x")[0] == 2  # not a revision
    assert edge_cfg(capsys, "rollback", url, "nosuch", "--to", str(r1))[0] == 2  # not a table


def test_lint_error_exit_1_nothing_written(etcd: Etcd, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = etcd.gateway_url(GW)
    (cfg / "variables.yml").write_text(
        (cfg / "variables.yml").read_text().replace("datatype: uint16", "datatype: uint61", 1)
    )
    code, out, err = edge_cfg(capsys, "push", str(cfg), url)
    assert code == 1
    assert f"{cfg}/variables.yml:" in out and "uint61" in out and "1 error(s)" in err
    with etcd.store(config_prefix(GW)) as s:
        assert s.snapshot().tables == {} and s.snapshot().meta is None


def test_rollback_lints_the_result(etcd: Etcd, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A revision written behind edge-cfg's back with an error is not rolled back to (exit 1)."""
    url = etcd.gateway_url(GW)
    with etcd.store(config_prefix(GW)) as s:
        good = {n: (cfg / f"{n}.yml").read_text() for n in ("endpoints", "drivers", "variables", "connector")}
        bad = dict(good, drivers="plc1: {kind: static}\n")
        r_bad = s.push(bad, 0, make_meta("raw"))
        s.push(good, s.revision(), make_meta("fixed"))
    code, out, err = edge_cfg(capsys, "rollback", url, "--to", f"rev={r_bad}")
    assert code == 1 and f"{url}@{r_bad}/drivers.yml:1:" in out, (out, err)
    code, out, err = edge_cfg(capsys, "rollback", url, "--to", f"rev={r_bad}", "--no-lint")
    assert code == 0


def test_concurrent_push_exit_3(
    etcd: Etcd, cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """push diffs at revision A; someone else pushes (a real second client, between push's read and its
    txn); the txn guarded by A fails and writes nothing."""
    from edge_gateway.config.etcd import store as store_mod

    url = etcd.gateway_url(GW)
    real = store_mod.Store.push
    other = etcd.store(config_prefix(GW))

    def someone_writes_first(self, tables, expect_revision, meta=None, base=None):  # type: ignore[no-untyped-def]
        real(other, {"endpoints": "x: 1\n"}, other.revision(), make_meta("someone else"))
        return real(self, tables, expect_revision, meta, base)

    monkeypatch.setattr(store_mod.Store, "push", someone_writes_first)
    code, out, err = edge_cfg(capsys, "push", str(cfg), url)
    monkeypatch.undo()
    assert code == 3 and "changed since revision" in err and out == ""
    with etcd.store(config_prefix(GW)) as s:
        assert s.snapshot().tables == {"endpoints": "x: 1\n"}
    other.close()


def test_network_down_exit_2_quickly(cfg: Path) -> None:
    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/edge/config/v1/{GW}"
    for argv in (["push", str(cfg), url], ["diff", str(cfg), url], ["history", url], ["watch", url]):
        r = subprocess.run([EDGE_CFG, *argv, "--timeout", "1"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (argv, r)
        assert "etcd unreachable at 127.0.0.1:" in r.stderr and "connection refused" in r.stderr
        assert "Traceback" not in r.stderr


def test_watch_prints_each_revision(etcd: Etcd, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = etcd.gateway_url(GW)
    with etcd.store(config_prefix(GW)) as s:
        start = s.revision() + 1
        r1 = s.push({"endpoints": "a: 1\n", "drivers": "b: 1\n"}, 0, make_meta("one"))
        r2 = s.push({"endpoints": "a: 2\n"}, s.revision(), make_meta("two"))
    code, out, _ = edge_cfg(capsys, "watch", url, "--from-revision", str(start), "--count", "2")
    assert code == 0
    first, second = out.splitlines()
    assert first.split("\t")[:2] == [str(r1), "+endpoints +drivers"] and first.endswith("one")
    assert second.split("\t")[:2] == [str(r2), "+endpoints -drivers"]
    etcd.compact()
    code, out, err = edge_cfg(capsys, "watch", url, "--from-revision", str(start), "--count", "1")
    assert code == 3 and "compacted" in err


def test_watch_live(etcd: Etcd, capsys: pytest.CaptureFixture[str]) -> None:
    url = etcd.gateway_url(GW)
    proc = subprocess.Popen([EDGE_CFG, "watch", url, "--count", "1", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        with etcd.store(config_prefix(GW)) as s:
            # Until the watcher has subscribed, each push is before its start revision: push until it prints.
            done = threading.Event()
            out: list[str] = []
            t = threading.Thread(target=lambda: (out.append(proc.stdout.read()), done.set()))  # type: ignore[union-attr]
            t.start()
            i = 0
            while not done.wait(0.2):
                i += 1
                s.push({"endpoints": f"a: {i}\n"}, s.revision(), make_meta("live"))
            assert proc.wait(10) == 0
            assert '"meta": {"who"' in out[0] and '"endpoints": "a: ' in out[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fleet_status(etcd: Etcd, capsys: pytest.CaptureFixture[str]) -> None:
    with etcd.store() as s:
        s.put_status(
            "gw-01",
            {"applied_revision": 5, "rejected_revision": 6, "problems": ["a", "b"], "health": "ok", "version": "0.1.0"},
        )
        s.put_status("gw-02", {"applied_revision": 5, "problems": [], "health": "degraded", "version": "0.1.0"})
        p = s.presence("gw-02", 30)
        code, out, _ = edge_cfg(capsys, "fleet", "status", etcd.url())
        assert code == 0
        rows = [line.split() for line in out.splitlines()]
        assert rows == [
            ["GATEWAY", "PRESENT", "APPLIED", "REJECTED", "PROBLEMS", "HEALTH", "VERSION"],
            ["gw-01", "NO", "5", "6", "2", "ok", "0.1.0"],
            ["gw-02", "yes", "5", "-", "0", "degraded", "0.1.0"],
        ]
        code, out, _ = edge_cfg(capsys, "fleet", "status", etcd.url(), "--json")
        assert code == 0 and '"rejected_revision": 6' in out
        p.revoke()


def test_10000_tags_push_in_one_txn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 10 000-tag variables.yml (≈1.35 MB in config/'s style) fits etcd's default 1.5 MiB request limit;
    30 000 tags do not: exit 1 with the table named in file:line form, nothing written."""
    d = tmp_path / "big"
    write_big_config(d, 10_000)
    size = (d / "variables.yml").stat().st_size
    assert request_size({"variables": (d / "variables.yml").read_text()}) < 1536 * 1024
    with Etcd(workdir=tmp_path / "etcd") as etcd:
        url = etcd.gateway_url(GW)
        code, out, err = edge_cfg(capsys, "push", str(d), url)
        assert code == 0, err
        rev = int(out)
        with etcd.store(config_prefix(GW)) as s:
            snap = s.snapshot()
            assert snap.config_revision == rev and len(snap.tables["variables"]) == size
            assert set(snap.mod_revisions.values()) == {rev}  # every table and _meta in one revision
        write_big_config(d, 13_000)
        code, out, err = edge_cfg(capsys, "push", str(d), url)
        assert code == 1 and f"{d}/variables.yml:1:" in out and "--max-request-bytes" in out
        with etcd.store(config_prefix(GW)) as s:
            assert s.snapshot().config_revision == rev
        # Claiming a larger limit than the server has: etcd's own refusal, also exit 1.
        code, out, err = edge_cfg(capsys, "push", str(d), url, "--max-request-bytes", str(4 << 20))
        assert code == 1 and "too large" in err
    # A server with a raised limit, and push told so: 13 000 tags in one txn.
    with Etcd(workdir=tmp_path / "etcd4", max_request_bytes=4 << 20) as etcd:
        code, out, err = edge_cfg(capsys, "push", str(d), etcd.gateway_url(GW), "--max-request-bytes", str(4 << 20))
        assert code == 0, err


def write_big_config(d: Path, tags: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    units = max(1, tags // 1000)
    (d / "endpoints.yml").write_text("plc:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 15020\n")
    (d / "drivers.yml").write_text(
        "".join(
            f"u{u}:\n  kind: static\n  endpoint_id: plc\n  proto: modbus\n  cfg: {{ unit_id: {u + 1} }}\n"
            for u in range(units)
        )
    )
    (d / "variables.yml").write_text(
        "".join(
            f"- tag: plant.u{i % units}.reg{i:05d}\n  driver_id: u{i % units}\n"
            f"  address: {{ type: holding, addr: {i // units} }}\n  datatype: uint16\n"
            f'  scale: "value / 10"\n  unit: m3_h\n'
            for i in range(tags)
        )
    )
    (d / "connector.yml").write_text(
        "cloud:\n  kind: mqtt5\n  endpoint: tcp://127.0.0.1:1883\n  tenant: t\n  device: gw\n"
    )
