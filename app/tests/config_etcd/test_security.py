"""RBAC and TLS against a real etcd: a gateway's user reads only its own config prefix and writes only its
own status and presence keys; TLS with client certificates; no secret in any output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_gateway.config.cli import main
from edge_gateway.config.etcd.store import EtcdUnavailable, PermissionDenied, Store, config_prefix, make_meta
from edge_gateway.config.etcd.url import Credentials, EtcdUrl
from edge_gateway.testkit_etcd import ROOT_PASSWORD, Etcd

DEMO = Path(__file__).resolve().parents[3] / "config"
EDGE_CFG = str(Path(sys.executable).parent / "edge-cfg")


def test_rbac_gateway_reads_only_its_prefix_and_writes_only_its_keys(tmp_path: Path) -> None:
    with Etcd(workdir=tmp_path / "etcd") as etcd:
        with etcd.store() as root:
            for gw in ("gw-a", "gw-b"):
                s = Store(EtcdUrl.parse(etcd.gateway_url(gw)), timeout=5)
                s.push({"endpoints": f"{gw}: 1\n"}, 0, make_meta())
                s.close()
            del root
        files = etcd.enable_auth(gateways=["gw-a", "gw-b"], operators=["ops"])
        a = etcd.store(config_prefix("gw-a"), "gw-a", files["gw-a"])
        a_on_b = etcd.store(config_prefix("gw-b"), "gw-a", files["gw-a"])
        try:
            assert a.snapshot().tables == {"endpoints": "gw-a: 1\n"}
            assert a.revision() >= a.snapshot().config_revision
            watch = a.watch(1)
            assert next(iter(watch)).tables == {"endpoints": "gw-a: 1\n"}
            watch.close()
            a.put_status("gw-a", {"applied_revision": 2})
            a.presence("gw-a", 30).revoke()
            with pytest.raises(PermissionDenied):
                a_on_b.snapshot()
            with pytest.raises(PermissionDenied):
                next(iter(a_on_b.watch(1)))
            with pytest.raises(PermissionDenied):
                a.put_status("gw-b", {"applied_revision": 666})
            with pytest.raises(PermissionDenied):
                a.presence("gw-b", 30)
            with pytest.raises(PermissionDenied):  # a gateway cannot write its own configuration either
                a.push({"endpoints": "evil: 1\n"}, a.snapshot().revision, make_meta())
            with pytest.raises(PermissionDenied):
                a.fleet()
        finally:
            a.close()
            a_on_b.close()
        # The operator pushes and reads the fleet; a wrong password is refused.
        with etcd.store(config_prefix("gw-b"), "ops", files["ops"]) as ops:
            ops.push({"endpoints": "gw-b: 2\n"}, ops.snapshot().revision, make_meta())
            assert [f.gateway_id for f in ops.fleet()] == ["gw-a"]
        wrong = tmp_path / "wrong"
        wrong.write_text("nope\n")
        with etcd.store(config_prefix("gw-a"), "gw-a", wrong) as bad, pytest.raises(PermissionDenied) as e:
            bad.snapshot()
        assert "nope" not in str(e.value)


def test_rbac_token_renewed_after_a_member_restart(tmp_path: Path) -> None:
    """etcd's simple tokens live in memory: after a restart the store authenticates again by itself."""
    with Etcd(workdir=tmp_path / "etcd") as etcd:
        files = etcd.enable_auth(gateways=["gw-a"])
        with etcd.store(config_prefix("gw-a"), "gw-a", files["gw-a"]) as a:
            assert a.snapshot().tables == {}
            etcd.stop_member(0)
            etcd.start()
            assert a.snapshot().tables == {}


def test_tls_with_client_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg"
    shutil.copytree(DEMO, cfg, ignore=shutil.ignore_patterns("README.md", "examples"))
    with Etcd(workdir=tmp_path / "etcd", tls=True) as etcd:
        url = etcd.gateway_url("gw-t")
        assert main(["push", str(cfg), url, *etcd.cli_args()]) == 0
        rev = int(capsys.readouterr().out)
        with etcd.store(config_prefix("gw-t")) as s:
            assert s.snapshot().config_revision == rev
        # The same through the environment.
        assert etcd.certs is not None
        env = {
            "EDGE_ETCD_CA": str(etcd.certs.ca),
            "EDGE_ETCD_CERT": str(etcd.certs.client_cert),
            "EDGE_ETCD_KEY": str(etcd.certs.client_key),
        }
        creds = Credentials.from_options_env(env=env)
        with Store(EtcdUrl.parse(url), creds) as s:
            assert s.snapshot().config_revision == rev
        # Without a client certificate, or without TLS: refused, exit 2, no traceback.
        no_cert = Credentials(ca=str(etcd.certs.ca))
        with Store(EtcdUrl.parse(url), no_cert, timeout=2) as s, pytest.raises(EtcdUnavailable):
            s.snapshot()
        assert main(["history", url, "--timeout", "2"]) == 2
        assert "etcd unreachable" in capsys.readouterr().err


def test_secrets_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Etcd(workdir=tmp_path / "etcd") as etcd:
        files = etcd.enable_auth(gateways=["gw-a"])
        password = files["gw-a"].read_text().strip()
        url = etcd.gateway_url("gw-b")
        for argv in (
            ["history", url, "--etcd-user", "gw-a", "--etcd-password-file", str(files["gw-a"])],
            ["history", url, "--etcd-user", "root", "--etcd-password-file", str(files["gw-a"])],
        ):
            assert main(argv) == 2
            out = capsys.readouterr()
            assert "permission denied" in out.err or "authentication failed" in out.err, out.err
            assert password not in out.out + out.err and ROOT_PASSWORD not in out.out + out.err


def test_tls_and_rbac_together_from_the_environment(tmp_path: Path) -> None:
    """The real edge-cfg process, everything from EDGE_ETCD_*: an operator pushes over TLS with a client
    certificate and a password; the gateway's user reads its own config and is refused another's."""
    cfg = tmp_path / "cfg"
    shutil.copytree(DEMO, cfg, ignore=shutil.ignore_patterns("README.md", "examples"))
    with Etcd(workdir=tmp_path / "etcd", tls=True) as etcd:
        files = etcd.enable_auth(gateways=["gw-a"], operators=["ops"])
        assert etcd.certs is not None
        env = {
            **os.environ,
            "EDGE_ETCD_CA": str(etcd.certs.ca),
            "EDGE_ETCD_CERT": str(etcd.certs.client_cert),
            "EDGE_ETCD_KEY": str(etcd.certs.client_key),
            "EDGE_ETCD_USER": "ops",
            "EDGE_ETCD_PASSWORD_FILE": str(files["ops"]),
        }
        r = subprocess.run(
            [EDGE_CFG, "push", str(cfg), etcd.gateway_url("gw-a")], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        rev = int(r.stdout)
        env.update(EDGE_ETCD_USER="gw-a", EDGE_ETCD_PASSWORD_FILE=str(files["gw-a"]))
        r = subprocess.run(
            [EDGE_CFG, "history", etcd.gateway_url("gw-a")], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == str(rev), r
        r = subprocess.run(
            [EDGE_CFG, "diff", str(cfg), etcd.gateway_url("gw-b")], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "permission denied" in r.stderr, r
        for secret in (files["gw-a"].read_text().strip(), files["ops"].read_text().strip()):
            assert secret not in r.stdout + r.stderr
