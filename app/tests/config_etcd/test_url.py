"""etcd URLs and credentials: what names a store, and what is refused before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_gateway.config.etcd.url import Credentials, EtcdUrl, UrlError


def test_parse_endpoints_prefix_and_gateway_id() -> None:
    u = EtcdUrl.parse("etcd://10.0.0.5:2379,etcd-b,[::1]:2380/edge/config/v1/gw-01/")
    assert u.endpoints == (("10.0.0.5", 2379), ("etcd-b", 2379), ("::1", 2380))
    assert u.prefix == "/edge/config/v1/gw-01"
    assert u.gateway_id == "gw-01"
    assert str(EtcdUrl.parse("etcd://h:1/a/b")) == "etcd://h:1/a/b"
    assert EtcdUrl.parse("etcd://h:1/a/b", gateway_id="press-7").gateway_id == "press-7"
    bare = EtcdUrl.parse("etcd://127.0.0.1:2379")
    assert (bare.prefix, bare.gateway_id) == ("", "")
    with pytest.raises(UrlError, match="no PREFIX"):
        bare.require_prefix()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://h:2379/x", "not an etcd URL"),
        ("etcd://user:pw@h:2379/x", "not part of the URL"),
        ("etcd://h:99999/x", "bad port"),
        ("etcd://h:2379,,h2/x", "empty HOST:PORT"),
        ("etcd://h:2379/a//b", "empty segment"),
        ("etcd://h:2379/edge/gw 1", "gateway id"),
    ],
)
def test_parse_refuses(text: str, why: str) -> None:
    with pytest.raises(UrlError, match=why):
        EtcdUrl.parse(text)


def test_credentials_options_win_over_environment(tmp_path: Path) -> None:
    for n in ("ca", "cert", "key", "pw", "ca2"):
        (tmp_path / n).write_text("x\n")
    env = {
        "EDGE_ETCD_CA": str(tmp_path / "ca2"),
        "EDGE_ETCD_CERT": str(tmp_path / "cert"),
        "EDGE_ETCD_KEY": str(tmp_path / "key"),
        "EDGE_ETCD_USER": "gw-01",
        "EDGE_ETCD_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    c = Credentials.from_options_env(ca=str(tmp_path / "ca"), env=env)
    assert c.ca == str(tmp_path / "ca") and c.cert == str(tmp_path / "cert") and c.user == "gw-01"
    assert c.tls and c.password() == "x"
    assert not Credentials.from_options_env(env={}).tls


def test_credentials_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("secret")
    with pytest.raises(UrlError, match="both --etcd-cert and --etcd-key"):
        Credentials.from_options_env(cert=str(tmp_path / "f"), env={})
    with pytest.raises(UrlError, match="both --etcd-user and --etcd-password-file"):
        Credentials.from_options_env(user="gw", env={})
    with pytest.raises(UrlError, match="does not exist"):
        Credentials.from_options_env(user="gw", password_file=str(tmp_path / "missing"), env={})


def test_password_is_not_in_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    c = Credentials.from_options_env(user="gw", password_file=str(tmp_path / "pw"), env={})
    assert "hunter2" not in repr(c) and c.password() == "hunter2"
