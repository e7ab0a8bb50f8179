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


def cli_diff(a: Path, b: Path) -> list[str]:
    r = subprocess.run([EDGE_CFG, "diff", str(a), str(b)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r
    return r.stdout.splitlines()


def with_password_file(d: Path) -> Path:
    """Turn on the demo's commented-out `password_file: secrets/mqtt.pass` (a relative path)."""
    (d / "secrets").mkdir()
    (d / "secrets" / "mqtt.pass").write_text("s3cret\n")
    (d / "secrets" / "mqtt.pass").chmod(0o600)
    p = d / "connector.yml"
    p.write_text(p.read_text().replace("  # password_file: secrets/mqtt.pass", "  password_file: secrets/mqtt.pass"))
    return d


def test_cli_diff_of_two_copies_in_different_directories_is_no_change(demo_copy) -> None:
    """Issue 20 item 3: the demo writes wal.dir, control.socket and the serial device relative
    (`../build/demo/...`); two copies at different depths used to differ in `wal, control` and rs485_0."""
    a = with_password_file(demo_copy(name="a"))
    b = with_password_file(demo_copy(name="deeper/still/b"))
    assert cli_diff(a, b) == ["no change"]
    assert cli_diff(b, a) == ["no change"]


def test_cli_diff_still_sees_a_changed_relative_path(demo_copy) -> None:
    a = demo_copy(name="a")
    b = demo_copy(
        {
            "gateway.yml": ("dir: ../build/demo/wal ", "dir: ../build/demo/wal2 "),
            "endpoints.yml": ("host: ../build/demo/ttyGW", "host: ../build/demo/ttyGW2"),
        },
        name="deeper/b",
    )
    assert cli_diff(a, b) == ["endpoints changed: rs485_0", "gateway changed: wal"]


def test_cli_diff_compares_new_as_if_installed_in_old_directory(demo_copy) -> None:
    """NEW's relative paths are resolved against OLD's directory (where a deployment puts them); an
    absolute path compares as written."""
    a = demo_copy(name="a")
    wal = (a / "../build/demo/wal").resolve()
    same = demo_copy({"gateway.yml": ("dir: ../build/demo/wal ", f"dir: {wal} ")}, name="x/same")
    assert cli_diff(a, same) == ["no change"]
    elsewhere = demo_copy({"gateway.yml": ("dir: ../build/demo/wal ", f"dir: {wal}-other ")}, name="x/other")
    assert cli_diff(a, elsewhere) == ["gateway changed: wal"]


def test_relative_paths_are_resolved_against_the_config_directory(demo_copy) -> None:
    """The rule itself: what the runtime uses is relative to the directory holding the files."""
    d = with_password_file(demo_copy(name="deeper/c"))
    snap = load_snapshot(d)
    assert snap.gateway.wal.dir == str((d / "../build/demo/wal").resolve())
    assert snap.gateway.control_socket == str((d / "../build/demo/control.sock").resolve())
    assert snap.connectors["mqtt_cloud"].password_file == str((d / "secrets/mqtt.pass").resolve())
    assert snap.plugin_endpoints["rs485_0"].host == str((d / "../build/demo/ttyGW").resolve())
