"""A connector added the way a third party would (issue 15): its own distribution with an entry point
in `edge_gateway.connectors`, `pip install --target` into a temporary directory put on PYTHONPATH,
and a real `edge-gateway run` whose connector.yml names it — no file of the project changed.

The dummy transport has no socket: it appends every accepted batch to a JSON-lines file and acks it
on the runner's next turn (`Poll(ready=True)`); it refuses some publishes (the runner sends them
again) and drops its "link" once, losing what was unsettled (the runner rewinds to acked+1 and sends
again). The file must then cover every committed seq up to the acked one: no gap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ..runtime.plant import Plant

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "edge-memlink"
version = "0.1.0"

[project.entry-points."edge_gateway.connectors"]
memlink = "edge_memlink:PLUGIN"
"""

MODULE = '''\
"""A dummy connector: batches to a JSON-lines file, acked at once; refuses and drops on request."""

import base64
import json
from collections import deque

from edge_gateway.delivery.contract import ConnectorPlugin, Poll, Session


class MemLink:
    kind = "memlink"
    keeps_unsettled = False  # a dropped link loses what was not acked: the runner must rewind

    def __init__(self, cfg, **_kw):
        o = dict(cfg.options)
        self.path = o["path"]
        self.refuse = set(o.get("refuse", []))  # publish numbers (1-based) refused once
        self.drop = set(o.get("drop", []))  # publish numbers at which the link drops
        self.commands = False
        self.n = 0
        self.up = False
        self.events = deque()

    def bind(self, events):
        self.ev = events

    def open(self):
        self.events.append(("connected",))

    def publish(self, msg):
        self.n += 1
        token = self.n
        if token in self.drop:
            self.events.clear()  # the unsettled acks die with the link
            self.events.append(("lost",))
            return token
        if token in self.refuse:
            self.events.append(("published", token, "refused by memlink"))
            return token
        with open(self.path, "a") as f:
            rec = {"n": token, "seq_first": msg.seq_first, "seq_last": msg.seq_last, "count": msg.count,
                   "cover": msg.cover, "encoding": msg.encoding, "qos": msg.qos, "props": msg.properties,
                   "payload": base64.b64encode(msg.payload).decode()}
            f.write(json.dumps(rec) + "\\n")
        self.events.append(("published", token, None))
        return token

    def reply(self, seq, payload):
        pass

    def poll(self):
        return Poll(ready=bool(self.events))

    def io(self, readable, writable):
        while self.events:
            ev = self.events.popleft()
            if ev[0] == "connected":
                self.up = True
                self.ev.on_connected(Session(max_qos=2))
            elif ev[0] == "lost":
                self.up = False
                self.ev.on_disconnected("memlink dropped the link")
            else:
                self.ev.on_published(ev[1], ev[2])

    def abort(self, discard=False):
        self.up = False
        self.events.clear()

    def close(self, deadline):
        self.up = False

    def status(self):
        return {"broker": "file://" + self.path, "client_id": "memlink", "published": self.n}


def factory(cfg, **kw):
    return MemLink(cfg, **kw)


SCHEMA = {
    "type": "object",
    "required": ["kind", "path"],
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "memlink"},
        "path": {"type": "string", "minLength": 1},
        "refuse": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "drop": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "qos": {"enum": [0, 1, 2]},
        "batch": {"type": "integer", "minimum": 1},
        "max_interval": {"$ref": "#/$defs/duration"},
        "compression": {"enum": ["zstd", "none"]},
        "backoff": {"type": "object"},
    },
}

PLUGIN = ConnectorPlugin("memlink", factory, schema=SCHEMA)
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("memlink-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "edge_memlink").mkdir()
    (src / "edge_memlink" / "__init__.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("memlink-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],  # fmt: skip
        check=True,
        timeout=300,
    )
    assert (target / "edge_memlink" / "__init__.py").exists()
    return target


def batches(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_pip_installed_connector_gets_batches_through_the_runner_with_acks_refusals_and_a_rewind(
    plant: Plant, plugin_dir: Path
) -> None:
    out = plant.tmp / "memlink.jsonl"
    (plant.cfg / "connector.yml").write_text(
        textwrap.dedent(f"""\
            memlink_out:
              kind: memlink
              path: {out}
              refuse: [3, 4]
              drop: [7]
              qos: 1
              batch: 8
              compression: none
              max_interval: 100ms
              backoff: {{ base: 100ms, max: 1s }}
            """)
    )
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "edge-cfg"), "lint", str(plant.cfg)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(plugin_dir)), timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    plant.start_gateway(env={"PYTHONPATH": str(plugin_dir)})
    plant.wait_ready()
    deadline = time.monotonic() + 30
    st: dict = {}
    while time.monotonic() < deadline:
        st = plant.ctl("connector.stats")
        if st["acked_seq"] >= 200 and st["published"] > 12:
            break
        time.sleep(0.2)
    assert st["acked_seq"] >= 200, (st, plant.log_tail())
    assert st["state"] == "connected" and st["broker"] == f"file://{out}"
    assert st["retries"] >= 3  # two refusals and one lost link
    acked = st["acked_seq"]
    assert plant.gw is not None
    plant.gw.terminate()
    assert plant.gw.wait(30) == 0, plant.log_tail()
    wal = subprocess.run(
        [str(Path(sys.executable).parent / "edge-bus"), "--wal-dir", str(plant.tmp / "wal"), "stats", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    persisted = json.loads(wal.stdout)["cursors"]["memlink_out"]["acked"]
    assert persisted >= acked  # the acks reached the WAL's cursor file
    acked = persisted

    got = batches(out)
    assert {b["n"] for b in got}.isdisjoint({3, 4, 7})
    seqs: set[int] = set()
    for b in got:
        first, last = map(int, b["cover"].split("-"))
        assert b["props"][:5] == [
            ["seq_first", str(b["seq_first"])],
            ["seq_last", str(b["seq_last"])],
            ["count", str(b["count"])],
            ["encoding", "identity"],
            ["cover", b["cover"]],
        ]
        seqs.update(range(first, last + 1))
    missing = sorted(set(range(1, acked + 1)) - seqs)
    assert not missing, f"gap in what the connector received: {missing[:20]}"
    # the refused batches came again later (the runner's retry), and the lost ones after the rewind
    covers = [b["cover"] for b in got]
    assert len(covers) > len(set(covers)) or any(b["n"] > 7 for b in got)

    log = plant.log_tail(200_000)
    assert "refused by memlink" in log
    assert "resending from seq" in log  # the rewind after the dropped link


def test_an_unknown_connector_kind_is_a_file_line_error_listing_the_installed_ones(tmp_path: Path) -> None:
    from edge_gateway.config.loader import ConfigError, load_snapshot

    root = Path(__file__).resolve().parents[3]
    cfg = tmp_path / "cfg"
    import shutil

    shutil.copytree(root / "config", cfg, ignore=shutil.ignore_patterns("examples", "README.md"))
    (cfg / "connector.yml").write_text("up:\n  kind: kafka9\n  endpoint: tcp://h\n")
    with pytest.raises(ConfigError) as e:
        load_snapshot(cfg)
    text = str(e.value)
    assert "connector.yml:2" in text and "kafka9" in text and "mqtt5" in text, text
