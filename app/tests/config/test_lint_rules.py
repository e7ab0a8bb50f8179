"""Every lint rule: a broken copy of the demo config exits 1 and points at the right line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_gateway.config.loader import ConfigError, lint, load_snapshot

from .conftest import DEMO, line_of

EDGE_CFG = Path(sys.executable).with_name("edge-cfg")

# (id, file, old text, new text, line needle in the edited file, message fragment)
CASES = [
    (
        "yaml-syntax",
        "drivers.yml",
        "  cfg: { unit_id: 2,",
        "  cfg: { unit_id: 2 [,",
        "unit_id: 2 [",
        "YAML syntax error",
    ),
    (
        "duplicate-key",
        "endpoints.yml",
        "    parity: E",
        "    parity: E\n    parity: N",
        "parity: N",
        "duplicate key 'parity'",
    ),
    ("unknown-key", "endpoints.yml", "    echo: false", "    echoo: false", "echoo", "unknown key 'echoo'"),
    (
        "missing-required",
        "endpoints.yml",
        "  scheme: tcp ",
        "  schemez: tcp ",
        "plc_tcp:",
        "missing required key 'scheme'",
    ),
    ("bad-enum", "endpoints.yml", "parity: E ", "parity: X ", "parity: X", "'X' is not one of"),
    ("yaml-bool-trap", "endpoints.yml", "    rs485: none", "    rs485: on", "rs485: on", "quote it"),
    (
        "port-range",
        "endpoints.yml",
        "port: 15020",
        "port: 70000",
        "port: 70000",
        "70000 is greater than the maximum",
    ),
    (
        "serial-port",
        "endpoints.yml",
        "  scheme: serial\n",
        "  scheme: serial\n  port: 502\n",
        "port: 502",
        "has no port",
    ),
    ("tcp-no-port", "endpoints.yml", "  port: 15020\n", "", "plc_tcp:", "needs a port"),
    (
        "bad-duration",
        "endpoints.yml",
        "timeout: 1000ms",
        "timeout: 1 sec",
        "timeout: 1 sec",
        "does not match",
    ),
    ("bad-rate", "endpoints.yml", "rate: 200pps", "rate: fast", "rate: fast", "does not match"),
    (
        "unit-id-range",
        "drivers.yml",
        "unit_id: 1\n",
        "unit_id: 300\n",
        "unit_id: 300",
        "300 is greater than the maximum of 247",
    ),
    (
        "retry-range",
        "drivers.yml",
        "retry: 3\n",
        "retry: 11\n",
        "retry: 11",
        "11 is greater than the maximum of 10",
    ),
    (
        "regs-per-req",
        "drivers.yml",
        "max_regs_per_req: 120",
        "max_regs_per_req: 200",
        "max_regs_per_req: 200",
        "maximum of 125",
    ),
    ("polling-pattern", "drivers.yml", "polling: 1s\n", "polling: 1m\n", "polling: 1m", "does not match"),
    (
        "unknown-endpoint",
        "drivers.yml",
        "endpoint_id: plc_tcp",
        "endpoint_id: plc_udp",
        "plc_udp",
        "unknown endpoint_id 'plc_udp'",
    ),
    (
        "reserved-kind",
        "drivers.yml",
        "kind: static                # static",
        "kind: wasm   # ",
        "kind: wasm",
        "reserved",
    ),
    (
        "unknown-proto",
        "drivers.yml",
        "proto: modbus\n  cfg:\n    unit_id: 1",
        "proto: bacnet\n  cfg:\n    unit_id: 1",
        "bacnet",
        "not supported",
    ),
    (
        "same-unit-twice",
        "drivers.yml",
        "cfg: { unit_id: 2,",
        "cfg: { unit_id: 1,",
        "unit_id: 1, polling: 1s, retry: 2, word",
        "already used by driver meter1",
    ),
    (
        "unknown-driver",
        "variables.yml",
        "driver_id: meter2\n  address: { type: input",
        "driver_id: meter9\n  address: { type: input",
        "meter9",
        "unknown driver_id 'meter9'",
    ),
    (
        "duplicate-tag",
        "variables.yml",
        "- tag: meter2.voltage_v",
        "- tag: meter1.voltage_v",
        "- tag: meter1.voltage_v",
        "duplicate tag 'meter1.voltage_v'",
        2,
    ),
    (
        "len-vs-datatype",
        "variables.yml",
        "address: { type: holding, addr: 4 }",
        "address: { type: holding, addr: 4, len: 1 }",
        "addr: 4, len: 1",
        "len 1 does not fit float32 (2 registers)",
    ),
    (
        "string-needs-len",
        "variables.yml",
        "addr: 12, len: 4 }",
        "addr: 12 }",
        "addr: 12 }",
        "needs address.len",
    ),
    (
        "bit-datatype",
        "variables.yml",
        "address: { type: discrete, addr: 0 }\n  datatype: bool",
        "address: { type: discrete, addr: 0 }\n  datatype: uint16  # was bool",
        "# was bool",
        "datatype must be bool",
    ),
    (
        "overlap",
        "variables.yml",
        "address: { type: holding, addr: 8 }",
        "address: { type: holding, addr: 5 }",
        "addr: 5 }",
        "overlaps plant.temp_c (4..5)",
    ),
    (
        "write-on-input",
        "variables.yml",
        "- tag: plant.pressure_bar\n  driver_id: plc1",
        "- tag: plant.pressure_bar\n  access: RW  # on input\n  driver_id: plc1",
        "# on input",
        "read-only input",
    ),
    ("write-without-enable", "drivers.yml", "enable_write: true ", "enable_write: false ", None, None),
    (
        "scale-unsafe",
        "variables.yml",
        'scale: "value / 10"',
        "scale: \"__import__('os').system('x')\"",
        "__import__",
        "not allowed",
    ),
    (
        "scale-name",
        "variables.yml",
        'scale: "value / 100"',
        'scale: "value / hundred"',
        "hundred",
        "unknown name 'hundred'",
    ),
    (
        "scale-syntax",
        "variables.yml",
        'scale: "value / 100"',
        'scale: "value / (100"',
        "(100",
        "invalid expression",
    ),
    (
        "scale-on-string",
        "variables.yml",
        "  datatype: string",
        '  datatype: string\n  scale: "value * 2"',
        "value * 2",
        "numeric datatypes",
    ),
    ("ref-invalid", "variables.yml", "ref: 40007", "ref: 20007", "ref: 20007", "not a Modicon reference"),
    (
        "ref-and-addr",
        "variables.yml",
        "ref: 40007 }",
        "ref: 40007, addr: 3 }",
        "ref: 40007, addr",
        "either ref or type+addr",
    ),
    ("qos-range", "connector.yml", "qos: 2 ", "qos: 3 ", "qos: 3", "is not one of [0, 1, 2]"),
    (
        "endpoint-url",
        "connector.yml",
        "endpoint: tcp://127.0.0.1:18830",
        "endpoint: udp://127.0.0.1:18830",
        "udp://",
        "does not match",
    ),
    (
        "ack-topic-needs-seq",
        "connector.yml",
        'ack_topic: "/edge/{tenant}/{device}/ack/{seq}"',
        'ack_topic: "/edge/{tenant}/{device}/ack"',
        "ack_topic",
        "must contain {seq}",
    ),
    (
        "topic-placeholder",
        "connector.yml",
        'batch_topic: "/edge/{tenant}/{device}/batch"',
        'batch_topic: "/edge/{site}/batch"',
        "batch_topic",
        "unknown placeholder(s) site",
    ),
    (
        "password-twice",
        "connector.yml",
        "  # password_file: secrets/mqtt.pass",
        "  password_file: secrets/mqtt.pass\n  password: x",
        "password_file: secrets",
        "not both",
    ),
    ("watermarks", "gateway.yml", "resume_lo: 0.6 ", "resume_lo: 0.9 ", "bus:", "must be below pause_hi"),
    (
        "wal-too-small",
        "gateway.yml",
        "max_bytes: 1GiB",
        "max_bytes: 20MiB",
        "max_bytes: 20MiB",
        "at least two segments",
    ),
    (
        "bad-size",
        "gateway.yml",
        "segment_bytes: 16MiB",
        "segment_bytes: 16 megs",
        "segment_bytes",
        "is not valid under any",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_config_points_at_the_line(case, demo_copy) -> None:
    name, fname, old, new, needle, fragment, *nth = case
    d = demo_copy({fname: (old, new)})
    problems = [p for p in lint(d) if p.severity == "error"]
    assert problems, f"{name}: no error reported"
    if needle is None:  # rule checked on another file than the one edited
        return
    want = f"{d / fname}:{line_of(d / fname, needle, *nth)}: "
    assert any(str(p).startswith(want) and fragment in str(p) for p in problems), (
        f"{name}: wanted {want}…{fragment}…; got:\n" + "\n".join(map(str, problems))
    )
    with pytest.raises(ConfigError):
        load_snapshot(d)


def test_write_without_enable_write_points_at_each_writable_tag(demo_copy) -> None:
    d = demo_copy({"drivers.yml": ("enable_write: true ", "enable_write: false ")})
    msgs = [str(p) for p in lint(d)]
    vy = d / "variables.yml"
    for tag in ("plant.setpoint_c", "plant.pump_on"):
        line = line_of(vy, "access: RW", 1 if tag == "plant.setpoint_c" else 2)
        assert any(m.startswith(f"{vy}:{line}: ") and "enable_write" in m for m in msgs), msgs


def test_all_problems_at_once(demo_copy) -> None:
    d = demo_copy(
        {
            "endpoints.yml": ("port: 15020", "port: 0"),
            "drivers.yml": ("retry: 3\n", "retry: 99\n"),
            "variables.yml": ('scale: "value / 10"', 'scale: "value.real"'),
            "gateway.yml": ("resume_lo: 0.6 ", "resume_lo: 0.95 "),
        }
    )
    files = {Path(p.file).name for p in lint(d) if p.severity == "error"}
    assert files == {"endpoints.yml", "drivers.yml", "variables.yml", "gateway.yml"}


def test_modicon_looking_addr_is_a_warning_only(demo_copy) -> None:
    d = demo_copy(
        {"variables.yml": ("address: { type: holding, addr: 20 }", "address: { type: holding, addr: 40021 }")}
    )
    problems = lint(d)
    vy = d / "variables.yml"
    [w] = [p for p in problems if p.severity == "warning"]
    assert str(w).startswith(f"{vy}:{line_of(vy, 'addr: 40021')}: warning: ") and "ref: 40021" in str(w)
    assert not [p for p in problems if p.severity == "error"]


def test_unscoped_cmd_topic_is_warned(demo_copy) -> None:
    d = demo_copy({"connector.yml": ('cmd_topic: "/edge/{tenant}/{device}/cmd/{tag}"', 'cmd_topic: "/edge/cmd/{tag}"')})
    problems = lint(d)
    assert [p.severity for p in problems] == ["warning"] and "cmd_topic" in problems[0].message


def test_missing_file_and_not_a_directory(tmp_path, demo_copy) -> None:
    d = demo_copy()
    (d / "connector.yml").unlink()
    assert any("connector.yml:1: missing" in str(p) for p in lint(d))
    assert str(lint(tmp_path / "nope")[0]).endswith("not a directory")


def test_cli_lint_demo_config_exits_0() -> None:
    r = subprocess.run([EDGE_CFG, "lint", str(DEMO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s)" in r.stderr


def test_cli_lint_broken_exits_1_with_file_line(demo_copy) -> None:
    d = demo_copy({"drivers.yml": ("unit_id: 1\n", "unit_id: 0\n")})
    r = subprocess.run([EDGE_CFG, "lint", str(d)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{d / 'drivers.yml'}:{line_of(d / 'drivers.yml', 'unit_id: 0')}: " in r.stdout


def test_cli_usage_error_exits_2() -> None:
    assert subprocess.run([EDGE_CFG, "frobnicate"], capture_output=True).returncode == 2
