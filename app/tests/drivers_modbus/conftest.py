"""The PLC simulator as a real subprocess, and builders for config dataclasses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.model import BusCfg
from edge_gateway.core.frame import Frame, frames_of
from edge_gateway.drivers.modbus.model import DATATYPE_REGS, Address, Driver, Endpoint, ModbusCfg, Variable
from edge_gateway.testkit import stop_pid

# One value per numeric datatype, each at an edge of its range.
SAMPLES = {
    "uint16": 51234,
    "int16": -1234,
    "uint32": 3_000_000_123,
    "int32": -2_000_000_001,
    "uint64": 2**63 + 12345,
    "int64": -(2**62) - 7,
    "float32": 1.5,
    "float64": -12345.678901,
}

PLCSIM = Path(__file__).resolve().parents[3] / "tools" / "plcsim" / "plcsim.py"


class Sim:
    def __init__(
        self,
        profile: dict[str, Any],
        workdir: Path,
        tcp: bool = True,
        rtu: list[str] | None = None,
        baud: int = 19200,
        extra: list[str] | None = None,
    ) -> None:
        self.profile_path = workdir / "profile.yml"
        self.profile_path.write_text(yaml.safe_dump(profile))
        self.args = [sys.executable, str(PLCSIM), str(self.profile_path), "--baud", str(baud), *(extra or [])]
        self.tcp, self.rtu = tcp, rtu or []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Sim:
        args = list(self.args)
        if self.tcp:
            args += ["--tcp", str(self.port)]
        for p in self.rtu:
            args += ["--rtu", p]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        fields = dict(kv.split("=") for kv in line.split()[1:])
        self.port = int(fields.get("tcp", 0))
        self.control_port = int(fields["control"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)  # type: ignore[arg-type]
            self.proc = None

    def ctl(self, **req: Any) -> Any:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as s, s.makefile("rw") as f:
            f.write(json.dumps(req) + "\n")
            f.flush()
            return json.loads(f.readline())


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Any]:
    sims: list[Sim] = []

    def make(profile: dict[str, Any], **kw: Any) -> Sim:
        s = Sim(profile, tmp_path, **kw).start()
        sims.append(s)
        return s

    yield make
    for s in sims:
        s.stop()


def tcp_endpoint(port: int, **kw: Any) -> Endpoint:
    return Endpoint(id="plc", scheme="tcp", host="127.0.0.1", port=port, timeout=kw.pop("timeout", 0.5), **kw)


def serial_endpoint(path: str, **kw: Any) -> Endpoint:
    return Endpoint(id="rs485", scheme="serial", host=path, timeout=kw.pop("timeout", 0.2), **kw)


def driver(did: str, unit: int, ep: str, polling: float = 0.2, **kw: Any) -> Driver:
    return Driver(did, "static", ep, "modbus", ModbusCfg(unit_id=unit, polling=polling, **kw))


def var(
    tag: str,
    did: str,
    table: str,
    addr: int,
    dt: str,
    length: int | None = None,
    access: str = "R",
    endian: str = "big",
    word_order: str = "big",
    scale: Any = None,
) -> Variable:
    n = length or (1 if table in ("coil", "discrete") else DATATYPE_REGS[dt] or 1)
    return Variable(tag, did, access, Address(table, addr, n), dt, endian, word_order, scale)  # type: ignore[arg-type]


def collect(bus: FrameBus, want: int, timeout: float = 10.0, pred: Any = None, what: str = "") -> list[Frame]:
    """Drain the bus until `want` frames (matching pred) arrived; fails loudly on timeout.

    A short list would surface later as an unrelated IndexError or a wrong count; the AssertionError says what
    was waited for (`what`, else the count and the predicate), for how long, and what did arrive. To read
    whatever comes within a time, use `drain_for`.
    """
    out: list[Frame] = []
    others: list[Frame] = []  # arrived but rejected by pred: often the best hint why
    deadline = time.monotonic() + timeout
    while len(out) < want:
        if time.monotonic() > deadline:
            raise AssertionError(_short_message(want, timeout, pred, what, out, others))
        for f in frames_of(bus.drain(10000, 0.05)):
            (out if pred is None or pred(f) else others).append(f)
    return out


def drain_for(bus: FrameBus, seconds: float, pred: Any = None) -> list[Frame]:
    """Every frame (matching pred) that arrives within `seconds`; may be empty (the caller asserts)."""
    out: list[Frame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += [f for f in frames_of(bus.drain(10000, 0.05)) if pred is None or pred(f)]
    return out


def _short_message(want: int, timeout: float, pred: Any, what: str, got: list[Frame], others: list[Frame]) -> str:
    wanted = what or (f"{want} frame(s)" + (f" matching {_pred_name(pred)}" if pred is not None else ""))
    lines = [f"collect: waited {timeout:g}s for {wanted}, got {len(got)} of {want}"]
    if got:
        lines.append(f"  last matching: {_brief(got[-5:])}")
    if pred is not None:
        lines.append(f"  {len(others)} other frame(s) arrived" + (f", last: {_brief(others[-5:])}" if others else ""))
    return "\n".join(lines)


def _pred_name(pred: Any) -> str:
    code = getattr(pred, "__code__", None)
    if code is None or getattr(pred, "__name__", "") != "<lambda>":
        return getattr(pred, "__name__", repr(pred))
    return f"a lambda at {Path(code.co_filename).name}:{code.co_firstlineno}"


def _brief(frames: list[Frame]) -> str:
    return ", ".join(f"{f.tag}={f.value!r} q={f.q}" for f in frames)


@pytest.fixture
def bus() -> FrameBus:
    return FrameBus(BusCfg(capacity=100000))
