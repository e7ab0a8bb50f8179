"""A driver added by `pip install` alone: a throw-away distribution with its own pyproject.toml and an
entry point in `edge_gateway.drivers` is installed with `pip install --target` into a temporary
directory, put on PYTHONPATH of a real `edge-gateway run`, and its frames reach the broker through the
WAL — with no file of the project changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_gateway.testkit import LOOPBACK, Mosquitto
from tests.consumer import BatchSubscriber

from .plant import BIN, Gateway, write_config

PLUGIN = '''
"""A counter driver: one thread per endpoint publishes every tag's counter each `period`."""

import threading
import time
from concurrent.futures import Future

from edge_gateway.core.driver import BaseDriver, Refused, SchemaFragments
from edge_gateway.core.frame import Frame, now_ms


class CounterWorker(threading.Thread):
    def __init__(self, endpoint, devices, tags, bus):
        super().__init__(name=f"counter:{endpoint.id}", daemon=True)
        self.heartbeat = time.monotonic()
        self.period = dict(endpoint.opts).get("period_ms", 100) / 1000
        step = {d.id: dict(d.cfg).get("step", 1) for d in devices}
        self.tags = [(t.tag, dict(t.address)["start"], step[t.driver_id]) for t in tags]
        self.bus, self.n, self.written = bus, 0, {}
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.wait(self.period):
            self.heartbeat = time.monotonic()
            ts = now_ms()
            self.bus.publish(
                [Frame(0, ts, tag, self.written.get(tag, start + step * self.n)) for tag, start, step in self.tags]
            )
            self.n += 1

    def stop(self):
        self._stop_evt.set()
        self.join(5)

    def status(self):
        return {"ticks": self.n}


class CounterPlugin(BaseDriver):
    name = "counter"
    schemes = ("counter",)
    fragments = SchemaFragments(
        endpoint_opts={"type": "object", "additionalProperties": False,
                       "properties": {"period_ms": {"type": "integer", "minimum": 10}}},
        cfg={"type": "object", "additionalProperties": False, "properties": {"step": {"type": "integer"}}},
        address={"type": "object", "required": ["start"], "additionalProperties": False,
                 "properties": {"start": {"type": "integer"}}},
    )
    stale_s = 10.0

    def worker(self, endpoint, devices, tags, ctx):
        w = CounterWorker(endpoint, devices, tags, ctx.bus)
        w.start()
        return w

    def write(self, worker, tag, value):
        if not isinstance(value, int):
            raise Refused("invalid_value", f"{tag.tag}: an integer, please")
        worker.written[tag.tag] = value
        fut = Future()
        fut.set_result(None)
        return fut


PLUGIN = CounterPlugin()
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "eg-counter-plugin"
version = "0.1.0"

[project.entry-points."edge_gateway.drivers"]
counter = "eg_counter:PLUGIN"

[tool.setuptools]
packages = ["eg_counter"]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution, built and installed with pip into a directory of its own."""
    root = tmp_path_factory.mktemp("plugin")
    dist = root / "dist"
    (dist / "eg_counter").mkdir(parents=True)
    (dist / "pyproject.toml").write_text(PYPROJECT)
    (dist / "eg_counter" / "__init__.py").write_text(PLUGIN)
    target = root / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(dist)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return target


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _config(d: Path, broker_port: int, kind: str = "dyn", proto: str = "counter") -> Path:
    return write_config(
        d,
        broker_port,
        endpoints="cnt:\n  scheme: counter\n  host: local\n  opts: { period_ms: 50 }\n",
        drivers=f"c1: {{ kind: {kind}, endpoint_id: cnt, proto: {proto}, cfg: {{ step: 2 }} }}\n",
        variables=textwrap.dedent(
            """\
            - { tag: c.a, driver_id: c1, datatype: int32, address: { start: 10 } }
            - { tag: c.b, driver_id: c1, datatype: int32, access: RW, address: { start: 1000 } }
            """
        ),
    )


def test_edge_cfg_plugins_lists_the_installed_plugin(site: Path) -> None:
    r = subprocess.run([str(BIN / "edge-cfg"), "plugins", "--json"], capture_output=True, text=True, env=_env(site))
    assert r.returncode == 0, r.stderr
    names = [row["name"] for row in json.loads(r.stdout)["edge_gateway.drivers"]]
    assert names == ["counter", "modbus", "mqtt", "opcua", "s7"]
    bare = subprocess.run([str(BIN / "edge-cfg"), "plugins"], capture_output=True, text=True)
    assert bare.returncode == 0 and "counter" not in bare.stdout and "modbus" in bare.stdout


def test_a_pip_installed_driver_is_polled_end_to_end(site: Path, mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw = Gateway(_config(tmp_path / "cfg", mosquitto.port), tmp_path / "gateway.log", env=_env(site))
    gw.lint()
    with BatchSubscriber(LOOPBACK, mosquitto.port) as sub:
        gw.start()
        try:
            assert sub.wait_for(lambda s: {"c.a", "c.b"} <= {f["tag"] for f in s.frames()}, 30), gw.log_tail()
            values = sorted(f["value"] for f in sub.frames() if f["tag"] == "c.a")
            assert values[0] >= 10 and all(v % 2 == 0 for v in values)  # step 2 from 10
            sub.publish("/edge/t/d/cmd/c.b", json.dumps({"seq": 1, "value": 77}).encode())
            sub.publish("/edge/t/d/cmd/c.a", json.dumps({"seq": 2, "value": 1}).encode())  # access R
            assert sub.wait_for(lambda s: {"1", "2"} <= s.acks.keys(), 15), sub.acks
            assert sub.acks["1"]["result"] == "ok" and sub.acks["2"]["result"] == "fail"
            assert sub.wait_for(lambda s: any(f["tag"] == "c.b" and f["value"] == 77 for f in s.frames()), 10)
            line = gw.status()["lines"]["cnt"]
            assert line["alive"] and line["drivers"]["ticks"] > 0
            # Hot reload: a new tag on the plugin's device restarts that endpoint's worker with it.
            v = gw.cfg / "variables.yml"
            v.write_text(v.read_text() + "- { tag: c.z, driver_id: c1, datatype: int32, address: { start: 500 } }\n")
            r = gw.tool("edge-ctl", "reload")
            assert r.returncode == 0, r.stdout + r.stderr  # (the file watcher may have applied it first)
            assert sub.wait_for(lambda s: any(f["tag"] == "c.z" and f["value"] >= 500 for f in s.frames()), 15)
        finally:
            assert gw.stop() == 0, gw.log_tail()
    stats = gw.tool("edge-bus", "--wal-dir", str(gw.cfg / "wal"), "stats", "--json")
    assert stats.returncode == 0, stats.stderr  # the frames went through the WAL: it holds them
    assert "committed" in stats.stdout, stats.stdout


def test_kind_dyn_names_an_installed_plugin(site: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "cfg", 1883, proto="bacnet")
    r = subprocess.run([str(BIN / "edge-cfg"), "lint", str(cfg)], capture_output=True, text=True, env=_env(site))
    assert r.returncode == 1
    assert "drivers.yml:1:" in r.stdout and "no driver plugin 'bacnet' is installed" in r.stdout, r.stdout
    assert "installed: counter, modbus, mqtt, opcua, s7" in r.stdout, r.stdout
    static = _config(tmp_path / "static", 1883, kind="static")
    r = subprocess.run([str(BIN / "edge-cfg"), "lint", str(static)], capture_output=True, text=True, env=_env(site))
    assert r.returncode == 1 and "kind: dyn" in r.stdout, r.stdout
