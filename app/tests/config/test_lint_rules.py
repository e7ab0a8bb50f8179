"""Every lint rule: a broken copy of the demo config exits 1 and points at the right line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_gateway.config import cli
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
        "is not a duration like 500ms",
    ),
    ("bad-rate", "endpoints.yml", "rate: 200pps", "rate: fast", "rate: fast", "is not a rate like 50pps"),
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
    (
        "polling-pattern",
        "drivers.yml",
        "polling: 1s\n",
        "polling: 1m\n",
        "polling: 1m",
        "is not a polling period in ms or s",
    ),
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
    ("qos-range", "connector.yml", "qos: 2 ", "qos: 3 ", "qos: 3", "connector mqtt_cloud: qos 3 is not one of 0, 1, 2"),
    (
        "endpoint-url",
        "connector.yml",
        "endpoint: tcp://127.0.0.1:18830",
        "endpoint: udp://127.0.0.1:18830",
        "udp://",
        "is not a broker URL",
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
        "ref-out-of-range",
        "variables.yml",
        "ref: 40007",
        "ref: 465537",
        "ref: 465537",
        "ref 465537 is out of range: holding refs are 40001..49999 or 400001..465536",
    ),
    (
        "bool-on-holding-len-2",
        "variables.yml",
        "address: { type: holding, addr: 2 }\n  datatype: uint32",
        "address: { type: holding, addr: 2, len: 2 }\n  datatype: bool",
        "addr: 2, len: 2",
        "len 2 does not fit bool (1 register)",
    ),
    (
        "coil-not-bool",
        "variables.yml",
        "address: { type: coil, addr: 0 }\n  datatype: bool",
        "address: { type: coil, addr: 0 }\n  datatype: int16  # on a coil",
        "# on a coil",
        "a coil holds one bit; datatype must be bool, not int16",
    ),
    (
        "coil-len-2",
        "variables.yml",
        "address: { type: coil, addr: 0 }",
        "address: { type: coil, addr: 0, len: 2 }",
        "type: coil, addr: 0, len: 2",
        "len 2 does not fit bool on a coil",
    ),
    (
        "write-on-discrete",
        "variables.yml",
        "- tag: plant.alarm\n  driver_id: plc1",
        "- tag: plant.alarm\n  access: W  # on discrete\n  driver_id: plc1",
        "# on discrete",
        "access W on a read-only discrete table",
    ),
    (
        "address-past-65535",
        "variables.yml",
        "address: { type: holding, addr: 8 }",
        "address: { type: holding, addr: 65534 }",
        "addr: 65534",
        "exceeds 65535",
    ),
    (
        "unknown-key-in-address",
        "variables.yml",
        "address: { type: holding, addr: 8 }",
        "address: { type: holding, addr: 8,\n             length: 4 }",
        "length: 4",
        "unknown key 'length'",
    ),
    (
        "reserved-kind-dyn",
        "drivers.yml",
        "meter1:\n  kind: static",
        "meter1:\n  kind: dyn",
        "kind: dyn",
        "meter1: proto modbus is built in: use kind: static (dyn names an installed plugin)",
    ),
    (
        "baud-not-standard",
        "endpoints.yml",
        "baud: 19200",
        "baud: 12345",
        "baud: 12345",
        "12345 is not one of",
    ),
    (
        "tls-endpoint-needs-ca",
        "endpoints.yml",
        "  scheme: tcp ",
        "  scheme: tls+tcp ",
        "plc_tcp:",
        "tls+tcp needs opts.ca",
    ),
    ("pause-hi-range", "gateway.yml", "pause_hi: 0.8 ", "pause_hi: 1.5 ", "pause_hi: 1.5", "maximum of 1"),
    ("resume-lo-zero", "gateway.yml", "resume_lo: 0.6 ", "resume_lo: 0 ", "resume_lo: 0 ", "less than or equal to"),
    (
        "metrics-port",
        "gateway.yml",
        "listen: 127.0.0.1:9108",
        "listen: 127.0.0.1:99999",
        "listen:",
        "port 99999 out of range",
    ),
    (
        "backoff-order",
        "connector.yml",
        "backoff: { base: 500ms, max: 2m }",
        "backoff: { base: 5m, max: 2m }",
        "backoff:",
        "backoff.base is larger than backoff.max",
    ),
    (
        "tls-on-tcp-connector",
        "connector.yml",
        "  # tls: { ca: certs/ca.pem,",
        "  tls: { ca: certs/ca.pem,",
        "tls: { ca",
        "tls settings need a tls:// endpoint",
    ),
    ("yaml-octal-trap", "variables.yml", "  unit: s\n", "  unit: 0755\n", "unit: 0755", "octal number: quote it"),
    ("yaml-base60-trap", "variables.yml", "  unit: s\n", "  unit: 12:30\n", "unit: 12:30", "base-60 number"),
    (
        "bad-size",
        "gateway.yml",
        "segment_bytes: 16MiB",
        "segment_bytes: 16 megs",
        "segment_bytes",
        "is not a size like",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_config_points_at_the_line(case, demo_copy, capsys) -> None:
    name, fname, old, new, needle, fragment, *nth = case
    d = demo_copy({fname: (old, new)})
    problems = [p for p in lint(d) if p.severity == "error"]
    assert problems, f"{name}: no error reported"
    with pytest.raises(ConfigError):
        load_snapshot(d)
    assert cli.main(["lint", str(d)]) == 1  # in-process: the exit code and the printed lines
    printed = capsys.readouterr().out.splitlines()
    if needle is None:  # rule checked on another file than the one edited
        return
    want = f"{d / fname}:{line_of(d / fname, needle, *nth)}: "
    assert any(line.startswith(want) and fragment in line for line in printed), (
        f"{name}: wanted {want}…{fragment}…; got:\n" + "\n".join(printed)
    )


# Legal but suspicious: a warning at the line, and the config still loads (exit 0).
WARNINGS = [
    (
        "tls-without-ca",
        "connector.yml",
        "endpoint: tcp://127.0.0.1:18830",
        "endpoint: tls://127.0.0.1:18830",
        "endpoint: tls://",
        "tls:// without tls.ca",
    ),
    (
        "rw-scale-not-invertible",
        "variables.yml",
        'scale: "value / 10"\n  unit: degC',
        'scale: "abs(value) / 10"\n  unit: degC',
        "abs(value)",
        "scale is not affine, so writes to this tag will be refused",
    ),
    (
        "octal-ref",
        "variables.yml",
        "address: { type: coil, addr: 0 }",
        "address: { ref: 000010 }",
        "ref: 000010",
        "octal number 8; taken as the Modicon ref 000010",
    ),
    (
        "serial-option-on-tcp",
        "endpoints.yml",
        "rate: 200pps ",
        "rate: 200pps\n    parity: N ",
        "parity: N",
        "parity only applies to serial lines",
    ),
    (
        "polling-below-timeout",
        "drivers.yml",
        "    polling: 1s\n",
        "    polling: 200ms\n",
        "polling: 200ms",
        "polling is shorter than the endpoint timeout",
    ),
    (
        "modicon-looking-addr",
        "variables.yml",
        "address: { type: holding, addr: 20 }",
        "address: { type: holding, addr: 40021 }",
        "addr: 40021",
        "did you mean ref: 40021",
    ),
]


@pytest.mark.parametrize("case", WARNINGS, ids=[c[0] for c in WARNINGS])
def test_suspicious_config_warns_at_the_line(case, demo_copy, capsys) -> None:
    name, fname, old, new, needle, fragment = case
    d = demo_copy({fname: (old, new)})
    assert cli.main(["lint", str(d)]) == 0
    printed = capsys.readouterr().out.splitlines()
    want = f"{d / fname}:{line_of(d / fname, needle)}: warning: "
    assert [line for line in printed if line.startswith(want) and fragment in line], (
        f"{name}: wanted {want}…{fragment}…; got:\n" + "\n".join(printed)
    )
    load_snapshot(d)  # warnings never stop a load


def test_octal_ref_is_read_as_written(demo_copy) -> None:
    d = demo_copy({"variables.yml": ("address: { type: coil, addr: 0 }", "address: { ref: 000010 }")})
    pump = load_snapshot(d).tag("plant.pump_on")
    assert pump is not None and (pump.address.type, pump.address.addr) == ("coil", 9)


def test_scale_problem_carries_the_column(demo_copy) -> None:
    d = demo_copy({"variables.yml": ('scale: "value / 100"', 'scale: "value / hundred"')})
    [p] = [p for p in lint(d) if p.severity == "error"]
    line = (d / "variables.yml").read_text().splitlines()[p.line - 1]
    assert line[p.column - 1 :].startswith("hundred") and f"(column {p.column})" in p.message


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


def test_modicon_looking_addr_is_the_only_problem(demo_copy) -> None:
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


def _paths(node, path=()):
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in children:
        yield from _paths(v, (*path, k))


@pytest.mark.parametrize("fname", ["endpoints.yml", "drivers.yml", "variables.yml", "connector.yml", "gateway.yml"])
def test_any_wrong_value_anywhere_is_a_problem_not_a_crash(fname, demo_copy) -> None:
    """Bad config must never crash a running gateway: replace every node in turn by a wrong value."""
    d = demo_copy()
    original = yaml.safe_load((d / fname).read_text())
    for i, path in enumerate(list(_paths(original))[1:]):
        data = copy.deepcopy(original)
        node = data
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = (None, "x", [1], -1)[i % 4]
        (d / fname).write_text(yaml.safe_dump(data))
        problems = lint(d)  # must not raise
        assert all(p.line >= 1 for p in problems), path  # some "wrong" values are legal (wal.dir: x)


def test_modbus_device_on_another_plugins_endpoint_is_an_error(demo_copy) -> None:
    """A Modbus device put on an OPC UA endpoint was silently dropped (no line polled it, lint clean)."""
    d = demo_copy()
    with open(d / "endpoints.yml", "a") as f:
        f.write("opc_wrong:\n  scheme: opc.tcp\n  host: 127.0.0.1\n  port: 4840\n")
    with open(d / "drivers.yml", "a") as f:
        f.write("wrong_dev:\n  kind: static\n  endpoint_id: opc_wrong\n  proto: modbus\n  cfg: { unit_id: 3 }\n")
    msgs = [str(p) for p in lint(d) if p.severity == "error"]
    line = line_of(d / "drivers.yml", "endpoint_id: opc_wrong")
    want = f"{d / 'drivers.yml'}:{line}: wrong_dev: proto modbus needs a Modbus endpoint; opc_wrong is not"
    assert any(m.startswith(want) for m in msgs), msgs
