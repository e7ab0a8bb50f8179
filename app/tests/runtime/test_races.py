"""The races of issue 15, each provoked deterministically: the interleaving is forced from inside the
code that runs on one thread while the test makes the other thread's change at exactly that point.

- a reload (or a supervisor restart) changes the worker table while `summary()` (the supervisor
  thread: one exception stops the watchdog keep-alives) or `status()` (control threads) walk it;
- `status()` / `summary()` read `uplink` more than once while a reload swaps it out;
- `update_variables` on a unit whose poll cycle is in flight: the cycle's accounting must land on the
  unit the line keeps (not on a copy the reload threw away), and the unit is not polled twice;
- `Cursor.read` reads `wal.segments` (which the writer's GC changes) only under the WAL's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.bus.writer import open_bus_and_wal
from edge_gateway.config.loader import load_snapshot
from edge_gateway.config.model import BusCfg, GatewayCfg
from edge_gateway.runtime.gateway import Gateway

try:  # the layout before issue 15, so this file shows the races on the old code too …
    from edge_gateway.acquisition.modbus import line as line_module  # type: ignore[import-not-found]
    from edge_gateway.bus.frame import Frame  # type: ignore[import-not-found]
except ImportError:  # … and the one of issue 15
    from edge_gateway.core.frame import Frame
    from edge_gateway.drivers.modbus import line as line_module

from ..bus.test_wal import cfg, frames
from ..drivers_modbus.conftest import driver, tcp_endpoint, var

ENDPOINTS = """\
a:
  scheme: tcp
  host: 127.0.0.1
  port: 9
  opts: {{ timeout: 100ms }}
b:
  scheme: tcp
  host: 127.0.0.1
  port: 9
  opts: {{ timeout: 100ms }}
{extra}"""
DRIVERS = """\
da: {{ endpoint_id: a, proto: modbus, cfg: {{ unit_id: 1, polling: 1s }} }}
db: {{ endpoint_id: b, proto: modbus, cfg: {{ unit_id: 1, polling: 1s }} }}
{extra}"""
VARIABLES = """\
- {{ tag: a.x, driver_id: da, address: {{ type: holding, addr: 0 }}, datatype: uint16 }}
- {{ tag: b.x, driver_id: db, address: {{ type: holding, addr: 0 }}, datatype: uint16 }}
{extra}"""
CONNECTOR = """\
cloud: {{ kind: mqtt5, endpoint: "tcp://127.0.0.1:9", tenant: t, device: d }}
"""
GATEWAY = """\
wal: {{ dir: {wal} }}
control: {{ socket: {sock} }}
"""


def write_config(d: Path, third: bool) -> None:
    d.mkdir(exist_ok=True)
    extra_ep = "c:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 9\n" if third else ""
    extra_dr = "dc: { endpoint_id: c, proto: modbus, cfg: { unit_id: 1, polling: 1s } }\n" if third else ""
    extra_v = "- { tag: c.x, driver_id: dc, address: { type: holding, addr: 0 }, datatype: uint16 }\n" if third else ""
    (d / "endpoints.yml").write_text(ENDPOINTS.format(extra=extra_ep))
    (d / "drivers.yml").write_text(DRIVERS.format(extra=extra_dr))
    (d / "variables.yml").write_text(VARIABLES.format(extra=extra_v))
    (d / "connector.yml").write_text(CONNECTOR.format())
    (d / "gateway.yml").write_text(GATEWAY.format(wal=d.parent / "wal", sock=d.parent / "control.sock"))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Any]]:
    write_config(tmp_path / "two", third=False)
    write_config(tmp_path / "three", third=True)
    two, three = load_snapshot(tmp_path / "two"), load_snapshot(tmp_path / "three")
    gw = Gateway(two, metrics=False)
    gw.reloader = None  # reloads come from the test only
    gw.start()
    try:
        yield gw, three
    finally:
        gw.stop()


def _reload_inside(gw: Gateway, new: Any, monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """The first `is_alive()` the test thread asks a line while walking the workers runs a whole reload
    on another thread (a third line appears) before it answers: the walk goes on over a changed table."""
    me, fired, errors = threading.current_thread(), [], []
    real = line_module.ModbusLine.is_alive

    def is_alive(self: Any) -> bool:
        if threading.current_thread() is me and not fired:
            fired.append(True)

            def reload() -> None:
                try:
                    gw.apply(new)
                except BaseException as e:  # noqa: BLE001 - reported by the test
                    errors.append(e)

            t = threading.Thread(target=reload)
            t.start()
            t.join(30)
        return real(self)

    monkeypatch.setattr(line_module.ModbusLine, "is_alive", is_alive)
    return errors


def test_summary_survives_a_reload_that_changes_the_workers(
    gateway: tuple[Gateway, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, three = gateway
    errors = _reload_inside(gw, three, monkeypatch)
    line = gw.summary()  # on the supervisor thread, with no try around it
    assert not errors
    assert line.startswith("lines ")
    assert gw.summary().startswith("lines 3/3")


def test_status_survives_a_reload_that_changes_the_workers(
    gateway: tuple[Gateway, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, three = gateway
    errors = _reload_inside(gw, three, monkeypatch)
    st = gw.status()  # on a control thread
    assert not errors
    assert set(st["lines"]) in ({"a", "b"}, {"a", "b", "c"})
    assert set(gw.status()["lines"]) == {"a", "b", "c"}


def test_status_and_summary_read_the_uplink_once(gateway: tuple[Gateway, Any]) -> None:
    """A reload that restarts the connector sets `uplink` to None and back: a reader that checks it
    and then reads it again gets None the second time."""
    gw, _ = gateway
    real = gw.runner
    reads = [0]

    class Swapping(type(gw)):  # type: ignore[misc]
        @property
        def uplink(self) -> Any:
            reads[0] += 1
            return real if reads[0] % 2 else None  # every second read: the uplink is being restarted

        @uplink.setter
        def uplink(self, value: Any) -> None:
            pass

    gw.__class__ = Swapping
    try:
        for _ in range(4):
            st = gw.status()
            assert st["uplink"] is None or st["uplink"]["connector"] == "cloud"
            assert "rev " in gw.summary()
    finally:
        gw.__class__ = Gateway


def test_a_tag_map_swapped_while_the_unit_is_polled_keeps_the_cycle_accounting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_poll, release = threading.Event(), threading.Event()

    def transact(self: Any, unit: Any, request: bytes, attempts: int) -> bytes:
        in_poll.set()
        assert release.wait(10)
        return b"\x00\x07" * 125  # a register read's data bytes (pdu.parse_raw): 125 registers of 7

    monkeypatch.setattr(line_module.ModbusLine, "_transact", transact)
    bus, published = _Bus(), []
    bus.sink = published
    d = driver("d", 1, "plc", polling=60.0)
    vs = [var("x", "d", "holding", 0, "uint16")]
    line = line_module.ModbusLine(tcp_endpoint(9), [d], vs, bus)  # type: ignore[arg-type]
    line.start()
    try:
        assert in_poll.wait(10), "the first poll never started"
        line.update_variables("d", [*vs, var("y", "d", "holding", 1, "uint16")])  # a reload, mid-cycle
        release.set()
        deadline = time.monotonic() + 5
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        st = line.status()["d"]
        assert {f.tag for f in published} == {"x"}, "polled twice: the cycle's next_due was lost with a copy"
        assert st["polls"] == 1, "the cycle in flight was counted on a copy the reload threw away"
        assert line.units["d"].next_due > time.monotonic() + 30, "the unit is due again at once"
    finally:
        release.set()
        line.stop()


class _Bus:
    paused = False
    sink: list[Frame]

    def publish(self, frames: list[Frame]) -> int:
        self.sink.extend(frames)
        return len(frames)

    def publish_blocks(self, blocks: list[Any]) -> int:  # a Modbus line publishes a FrameBlock per read
        from edge_gateway.core.frame import frames_of

        return self.publish(frames_of(blocks))


class _LockedList(list):  # type: ignore[type-arg]
    """`wal.segments`, asserting every read from the test thread holds the WAL's lock."""

    def __init__(self, items: list[int], wal: Any, thread: threading.Thread) -> None:
        super().__init__(items)
        self.wal, self.thread = wal, thread

    def _check(self) -> None:
        if threading.current_thread() is self.thread:
            assert self.wal._cond._is_owned(), "wal.segments read without the WAL lock"

    def __getitem__(self, i: Any) -> Any:
        self._check()
        return super().__getitem__(i)

    def __len__(self) -> int:
        self._check()
        return super().__len__()

    def __bool__(self) -> bool:
        self._check()
        return super().__len__() > 0

    def __iter__(self) -> Any:
        self._check()
        return super().__iter__()


def test_cursor_skips_dropped_frames_under_the_wal_lock(tmp_path: Path) -> None:
    c = cfg(tmp_path, segment_bytes=4 << 10, max_bytes=16 << 10, flush_ms=1)
    bus, wal, writer = open_bus_and_wal(GatewayCfg(bus=BusCfg(capacity=100000), wal=c))
    slow = wal.cursor("slow")
    writer.start()
    try:
        for _ in range(0, 3000, 20):
            bus.publish(frames(0, 20))
            writer.flush()
        writer.flush()
    finally:
        writer.stop()
    assert wal.segments[0] > 1  # drop_oldest took frames the slow cursor never read
    wal.segments = _LockedList(list(wal.segments), wal, threading.current_thread())
    real_read, calls = wal.read_runs, []

    def read(pos: int, max_frames: int, hint: Any = None) -> list[Any]:
        calls.append(pos)  # the first read finds nothing at pos (dropped under it): the cursor skips ahead
        return [] if len(calls) == 1 else real_read(pos, max_frames, hint)

    wal.read_runs = read  # type: ignore[method-assign]
    got = slow.read(1000, 0)
    assert len(calls) == 2, "the cursor never looked for the oldest frame still held"
    assert got and got[0].seq == list.__getitem__(wal.segments, 0)
