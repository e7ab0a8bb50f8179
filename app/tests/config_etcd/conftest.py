"""Real etcd members (Debian's etcd-server) on loopback ports, ended by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.testkit_etcd import Etcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """One member."""
    e = Etcd(workdir=tmp_path / "etcd")
    try:
        yield e.start()
    finally:
        e.stop()


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[Etcd]:
    """A 3-member cluster."""
    e = Etcd(members=3, workdir=tmp_path / "etcd3")
    try:
        yield e.start()
    finally:
        e.stop()
