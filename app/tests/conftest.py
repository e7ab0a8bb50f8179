"""Fixtures shared by every test: real Mosquitto brokers and real pty pairs, ended by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.testkit import Mosquitto, PtyPair

from .runtime.plant import Plant


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir=tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path / "pty").start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    """The demo plant (simulator, pty line, Mosquitto, config copy); the gateway is started by the test."""
    p = Plant(tmp_path)
    try:
        yield p
    finally:
        p.stop()
