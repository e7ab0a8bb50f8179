"""Uplink fixtures: a real FrameBus + WAL + writer in tmp_path, an Uplink on it, a decoding subscriber,
and a throw-away PKI (openssl) for TLS tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.bus import open_bus_and_wal
from edge_gateway.config.model import Backoff, Connector, GatewayCfg, Snapshot, WalCfg
from edge_gateway.core.frame import Frame
from edge_gateway.delivery.commands import Downlink
from edge_gateway.delivery.runner import Runner
from edge_gateway.runtime.commands import WriteRouter
from edge_gateway.testkit import LOOPBACK, Mosquitto, require
from tests.consumer import BatchSubscriber


def connector(port: int, **kw: Any) -> Connector:
    base = Connector(
        id="cloud",
        kind="mqtt5",
        scheme="tcp",
        host=LOOPBACK,
        port=port,
        client_id="edge-test",
        tenant="t1",
        device="gw1",
        batch=32,
        max_interval=0.1,
        backoff=Backoff(0.1, 0.5),
        keepalive=5.0,
    )
    return replace(base, **kw)


@dataclass
class Pipeline:
    """bus → WAL writer → WAL → Uplink, as the gateway wires them, minus the lines."""

    dir: Path
    conn: Connector
    bus: Any = None
    wal: Any = None
    writer: Any = None
    uplink: Runner | None = None
    commands: Snapshot | None = None  # validate cloud commands against this snapshot (no lines: no writes)
    published: list[int] = field(default_factory=list)

    def open(self) -> Pipeline:
        cfg = GatewayCfg(wal=WalCfg(dir=str(self.dir), flush_ms=20, segment_bytes=1 << 20, max_bytes=64 << 20))
        self.bus, self.wal, self.writer = open_bus_and_wal(cfg)
        if not self.writer.is_alive():
            self.writer.start()
        snap = self.commands
        downlink = Downlink(self.conn.id, WriteRouter(lambda: snap), self.bus.publish) if snap is not None else None
        self.runner = Runner(self.conn, self.wal.cursor(self.conn.id), record=self.bus.publish, downlink=downlink)
        self.writer.add_listener(self.runner.wake)
        self.runner.start()
        return self

    def publish(self, n: int, tag: str = "line.t", start_value: int = 0) -> list[Frame]:
        frames = [Frame(0, 1700000000000 + i, f"{tag}{i % 10}", float(start_value + i)) for i in range(n)]
        assert self.bus.publish(frames) == n
        self.published.extend(f.seq for f in frames)
        return frames

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        if self.writer is not None:
            self.writer.stop()

    def wait_acked(self, seq: int, timeout: float = 20.0) -> bool:
        assert self.runner is not None
        deadline = time.monotonic() + timeout
        while self.runner.cursor.acked < seq and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.runner.cursor.acked >= seq


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(conn: Connector, name: str = "wal", commands: Snapshot | None = None) -> Pipeline:
        p = Pipeline(tmp_path / name, conn, commands=commands).open()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., BatchSubscriber]]:
    made: list[BatchSubscriber] = []

    def make(port: int, **kw: Any) -> BatchSubscriber:
        s = BatchSubscriber(LOOPBACK, port, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps sessions and queued messages across stop()/start(): the cloud side of an
    outage test, where the subscriber must not lose what arrived while it was reconnecting."""
    store = tmp_path / "mosq-store"
    store.mkdir()
    # `user root`: a root-started mosquitto drops to the mosquitto user, who cannot write into tmp_path
    extra = ["persistence true", f"persistence_location {store}/", "user root"]
    broker = Mosquitto(workdir=tmp_path / "mosq", extra=extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Pki:
    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.crt")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (test-only keys)."""
    d = tmp_path_factory.mktemp("pki")
    ssl = require("openssl")

    def run(*args: str) -> None:
        subprocess.run([ssl, *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=edge-gateway test CA")  # fmt: skip
    for name in ("server", "client"):
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return Pki(d)
