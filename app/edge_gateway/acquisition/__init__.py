"""Line threads that poll devices and hand frames to the bus; never touch the disk.

`start_line` is the one entry point the runtime uses: it picks the worker for an
endpoint's protocol and starts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.model import Driver, Endpoint, Variable


def start_line(endpoint: Endpoint, drivers: Sequence[Driver], variables: Sequence[Variable], bus: FrameBus) -> Any:
    from edge_gateway.acquisition.modbus.line import ModbusLine

    line = ModbusLine(endpoint, drivers, variables, bus)
    line.start()
    return line
