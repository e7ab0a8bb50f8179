"""Options of the HIL suite. Without them everything runs against the PLC simulator on this machine;
with `--serial` / `--plc` the same tests drive real devices (see README.md for the wiring)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import Hardware, Rig


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "hardware-in-the-loop")
    g.addoption(
        "--serial",
        help="RS-485 adapter of a real line, e.g. /dev/ttyUSB0 (instead of the simulator's pty)",
    )
    g.addoption(
        "--plc", help="HOST:PORT of a real Modbus/TCP PLC (instead of the simulator)"
    )
    g.addoption(
        "--unit", type=int, default=1, help="unit id of the real device (default 1)"
    )
    g.addoption(
        "--baud", type=int, default=19200, help="baud rate of the real RS-485 line"
    )
    g.addoption(
        "--parity",
        default="E",
        choices=("N", "E", "O"),
        help="parity of the real RS-485 line",
    )
    g.addoption(
        "--outage",
        type=float,
        default=float(os.environ.get("HIL_OUTAGE_S", "8")),
        help="broker outage, s",
    )
    g.addoption(
        "--kills",
        type=int,
        default=int(os.environ.get("HIL_KILLS", "8")),
        help="power cuts in a row",
    )
    g.addoption(
        "--cuts",
        type=int,
        default=int(os.environ.get("HIL_CUTS", "10")),
        help="real power cuts (ext4 shutdown on a loop device) in test_powercut.py",
    )
    g.addoption(
        "--powercut-seed",
        type=int,
        default=int(os.environ.get("HIL_POWERCUT_SEED", "14")),
        help="seed of the cut moments",
    )
    g.addoption(
        "--powercut-report",
        default=None,
        help="write the power-cut figures to this JSON file (make powercut: build/powercut/report.json)",
    )
    g.addoption(
        "--soak-seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", "600")),
    )
    g.addoption(
        "--soak-rate",
        type=int,
        default=int(os.environ.get("SOAK_RATE", "5000")),
        help="frames/s",
    )
    g.addoption(
        "--soak-report",
        default=None,
        help="write the soak's figures to this JSON file (make soak: build/hil/soak.json)",
    )


@pytest.fixture
def hw(request: pytest.FixtureRequest) -> Hardware:
    o = request.config.option
    return Hardware(
        serial=o.serial, plc=o.plc, unit=o.unit, baud=o.baud, parity=o.parity
    )


@pytest.fixture
def rig(tmp_path: Path, hw: Hardware) -> Iterator[Rig]:
    r = Rig(tmp_path, hw)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def simulated(hw: Hardware) -> None:
    """Tests that need the simulator's fault injection or known register values."""
    if hw.real:
        pytest.skip(
            "needs the PLC simulator's fault injection / known values; runs without --serial/--plc"
        )
