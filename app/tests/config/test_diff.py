"""diff(): the impact set that hot reload applies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_gateway.config.diff import diff
from edge_gateway.config.loader import load_snapshot

EDGE_CFG = Path(sys.executable).with_name("edge-cfg")


def test_no_change(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    assert diff(a, load_snapshot(demo_copy(name="b"))).empty


def test_variable_change_swaps_only_that_tag_map(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    b = load_snapshot(demo_copy({"variables.yml": ('scale: "value / 100"', 'scale: "value / 1000"')}, name="b"))
    impact = diff(a, b)
    assert impact.variables_changed == ("plc1",)
    assert not (impact.drivers_changed or impact.endpoints_changed)


def test_driver_change_restarts_that_driver_only(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    b = load_snapshot(demo_copy({"drivers.yml": ("unit_id: 2, polling: 1s", "unit_id: 2, polling: 2s")}, name="b"))
    impact = diff(a, b)
    assert impact.drivers_changed == ("meter2",) and not impact.variables_changed and not impact.endpoints_changed


def test_endpoint_change_reopens_the_line_and_covers_its_drivers(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    b = load_snapshot(
        demo_copy(
            {
                "endpoints.yml": ("baud: 19200", "baud: 9600"),
                "drivers.yml": ("unit_id: 2, polling: 1s", "unit_id: 2, polling: 2s"),
            },
            name="b",
        )
    )
    impact = diff(a, b)
    assert impact.endpoints_changed == ("rs485_0",)
    assert impact.drivers_changed == ()  # meter2 restarts with its line anyway


def test_added_and_removed_and_moved(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    b = load_snapshot(
        demo_copy(
            {
                "endpoints.yml": (
                    "rs485_0:",
                    "plc2:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 15021\nrs485_0:",
                )
            },
            name="b",
        )
    )
    assert diff(a, b).endpoints_added == ("plc2",) and diff(b, a).endpoints_removed == ("plc2",)
    c = load_snapshot(
        demo_copy(
            {
                "endpoints.yml": (
                    "rs485_0:",
                    "plc2:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 15021\nrs485_0:",
                ),
                "drivers.yml": (
                    "endpoint_id: rs485_0\n  proto: modbus\n  cfg: { unit_id: 2",
                    "endpoint_id: plc2\n  proto: modbus\n  cfg: { unit_id: 2",
                ),
            },
            name="c",
        )
    )
    impact = diff(a, c)
    assert "meter2" in impact.drivers_added and "meter2" in impact.drivers_removed


def test_gateway_and_connector_changes(demo_copy) -> None:
    a = load_snapshot(demo_copy(name="a"))
    b = load_snapshot(
        demo_copy(
            {
                "gateway.yml": ("capacity: 65536", "capacity: 1024"),
                "connector.yml": ("batch: 32", "batch: 64"),
            },
            name="b",
        )
    )
    impact = diff(a, b)
    assert impact.gateway_changed == ("bus",) and impact.connectors_changed == ("mqtt_cloud",)


def test_cli_diff(demo_copy) -> None:
    a = demo_copy(name="a")
    b = demo_copy({"variables.yml": ('scale: "value / 100"', 'scale: "value / 1000"')}, name="b")
    r = subprocess.run([EDGE_CFG, "diff", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "variables changed: plc1"
    r = subprocess.run([EDGE_CFG, "schema", "variables"], capture_output=True, text=True)
    assert r.returncode == 0 and '"title": "variables.yml: the list of tags"' in r.stdout
