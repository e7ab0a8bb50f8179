"""The parts of the etcd configuration source that need no etcd: where `--config` points
(config/bootstrap.py, problems as `file:line`) and the revision cache (runtime/cfgcache.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_gateway.config import bootstrap
from edge_gateway.config.loader import ConfigError
from edge_gateway.runtime.cfgcache import RevisionCache

ROOT = Path(__file__).resolve().parents[3]


def test_a_config_directory_is_not_a_store(tmp_path: Path) -> None:
    assert bootstrap.resolve(str(ROOT / "config")) is None
    assert bootstrap.resolve(str(tmp_path)) is None  # no gateway.yml: the loader reports what is missing


def test_an_etcd_url_is_a_store() -> None:
    cfg = bootstrap.resolve("etcd://127.0.0.1:2379,127.0.0.1:2381/edge/config/v1/gw1")
    assert cfg is not None and cfg.url == "etcd://127.0.0.1:2379,127.0.0.1:2381/edge/config/v1/gw1"
    assert cfg.gateway_id is None  # the prefix's last segment, decided by the URL parser


def test_a_bootstrap_file_names_the_store_and_the_host_local_settings(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "gateway.yml").write_text(
        "config_source:\n"
        "  etcd:\n"
        "    endpoints: [127.0.0.1:2379, 127.0.0.1:2381]\n"
        "    prefix: /edge/config/v1/{gateway_id}\n"
        "    gateway_id: press-04\n"
        "    username: press-04\n"
        "    password_file: pw\n"
        "metrics: { listen: 127.0.0.1:9333 }\n"
        "control: { socket: ctl.sock }\n"
    )
    cfg = bootstrap.resolve(str(tmp_path))
    assert cfg is not None
    assert cfg.url == "etcd://127.0.0.1:2379,127.0.0.1:2381/edge/config/v1/press-04"
    assert cfg.gateway_id == "press-04" and cfg.username == "press-04"
    assert cfg.password_file == str((tmp_path / "pw").resolve())
    assert cfg.metrics_listen == ("127.0.0.1", 9333)
    assert cfg.control_socket == str((tmp_path / "ctl.sock").resolve())
    assert cfg.origin == f"{tmp_path / 'gateway.yml'}:1"


def test_a_wrong_bootstrap_file_is_every_problem_at_its_line(tmp_path: Path) -> None:
    gw = tmp_path / "gateway.yml"
    gw.write_text(
        "config_source:\n"
        "  etcd:\n"
        "    endpoints: [127.0.0.1]\n"  # no port
        "    prefix: /edge/config/v1/{gateway_id}\n"  # placeholder without gateway_id
        "    pasword_file: pw\n"  # a typo
        "wal: { dir: x }\n"  # not host-local: the fleet's gateway.yml says it
    )
    with pytest.raises(ConfigError) as e:
        bootstrap.resolve(str(tmp_path))
    text = [str(p) for p in e.value.problems]
    assert any(t.startswith(f"{gw}:3: ") and "127.0.0.1" in t for t in text), text
    assert any(t.startswith(f"{gw}:5: ") and "pasword_file" in t for t in text), text
    assert any(t.startswith(f"{gw}:6: ") and "wal" in t for t in text), text

    gw.write_text(
        "config_source:\n  etcd:\n    endpoints: [127.0.0.1:2379]\n    prefix: /edge/config/v1/{gateway_id}\n"
    )
    with pytest.raises(ConfigError) as e:
        bootstrap.resolve(str(tmp_path))
    assert [str(p) for p in e.value.problems] == [f"{gw}:4: config_source.etcd.prefix: {{gateway_id}} needs gateway_id"]


TABLES = {f"{n}.yml": f"# {n}\n" for n in ("endpoints", "drivers", "variables", "connector", "gateway")}


def test_the_cache_keeps_the_last_applied_revision_only(tmp_path: Path) -> None:
    cache = RevisionCache(tmp_path / "etcd")
    assert cache.current() is None
    p5 = cache.write(5, TABLES, {"source": "etcd://x/y"})
    assert sorted(os.listdir(p5)) == sorted([*TABLES, "revision.json"])
    assert cache.current() is None  # written, not applied: not the cache yet
    cache.commit(5)
    cur = cache.current()
    assert cur is not None and cur.revision == 5 and cur.path == p5 and cur.meta["source"] == "etcd://x/y"

    p7 = cache.write(7, {**TABLES, "variables.yml": "[]\n"})
    cache.discard(7)  # refused: gone, 5 stays
    assert not p7.exists() and cache.current().revision == 5  # type: ignore[union-attr]
    cache.write(9, TABLES)
    cache.commit(9)
    assert sorted(os.listdir(tmp_path / "etcd")) == ["current", "rev-9"]
    cache.discard(9)  # the running one is never removed
    assert cache.current().revision == 9  # type: ignore[union-attr]


def test_a_key_that_is_not_a_table_never_becomes_a_path(tmp_path: Path) -> None:
    cache = RevisionCache(tmp_path / "etcd")
    p = cache.write(3, {"../../evil.yml": "x", "_meta": "{}", "variables": "[]\n"})
    assert sorted(os.listdir(p)) == ["revision.json", "variables.yml"]
    assert not (tmp_path / "evil.yml").exists()
