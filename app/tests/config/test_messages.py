"""Lint messages a new user can act on (issue 20 item 1): each names the entry (the tag, the id),
the key as written in YAML, and the nearest valid word for a typo; one `file:line: message` a line.
Run through the real `edge-cfg lint` process."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import line_of

EDGE_CFG = Path(sys.executable).with_name("edge-cfg")
LINE = re.compile(r"^(?P<file>[^:]+\.yml):(?P<line>[0-9]+): (?:warning: )?(?P<message>\S.*)$")


def lint(d: Path) -> tuple[int, list[str]]:
    r = subprocess.run([str(EDGE_CFG), "lint", str(d)], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    for x in lines:
        assert LINE.match(x), f"not file:line: message: {x!r}"
    return r.returncode, lines


# (id, file, old text, new text, needle for the line, the whole message)
CASES = [
    (
        "enum-datatype",
        "variables.yml",
        "  datatype: uint16\n  scale",
        "  datatype: unit16\n  scale",
        "unit16",
        "tag plant.flow_m3h: datatype 'unit16' is not one of bool, uint16, int16, uint32, int32, uint64, int64, "
        "float32, float64, string, binary, float, double, datetime; did you mean uint16?",
    ),
    (
        "enum-nested-key",
        "variables.yml",
        "address: { type: holding, addr: 1 }",
        "address: { type: holdin, addr: 1 }",
        "holdin,",
        "tag plant.level_pct: address.type 'holdin' is not one of holding, input, coil, discrete; "
        "did you mean holding?",
    ),
    (
        "enum-wrong-case",
        "endpoints.yml",
        "    parity: E ",
        "    parity: e ",
        "parity: e",
        "endpoint rs485_0: opts.parity 'e' is not one of N, E, O; did you mean E?",
    ),
    (
        "enum-nothing-close",
        "endpoints.yml",
        "    parity: E ",
        "    parity: X ",
        "parity: X",
        "endpoint rs485_0: opts.parity 'X' is not one of N, E, O",
    ),
    (
        "unknown-key-in-tag",
        "variables.yml",
        "  address: { type: holding, addr: 0 }",
        "  adress: { type: holding, addr: 0 }",
        "adress",
        "tag plant.flow_m3h: unknown key 'adress'; did you mean address?",
    ),
    (
        "bad-tag-named-by-position",
        "variables.yml",
        "- tag: plant.level_pct",
        '- tag: "level %"',
        "level %",
        "variable 2: tag 'level %' is not a tag name of letters, digits and _ . : - ; MQTT source tags may use "
        "{1}, {2}, … (captured topic levels)",
    ),
    (
        "no-tag-named-by-position",
        "variables.yml",
        "- tag: plant.level_pct",
        "- tagg: plant.level_pct",
        "tagg",
        "variable 2: unknown key 'tagg'; did you mean tag?",
    ),
    (
        "unknown-key-in-endpoint-opts",
        "endpoints.yml",
        "    echo: false",
        "    echoo: false",
        "echoo",
        "endpoint rs485_0: opts: unknown key 'echoo'; did you mean echo?",
    ),
    (
        "unknown-key-in-driver-cfg",
        "drivers.yml",
        "    polling: 1s",
        "    poling: 1s",
        "poling",
        "driver plc1: cfg: unknown key 'poling'; did you mean polling?",
    ),
    (
        "unknown-key-in-connector",
        "connector.yml",
        "  batch: 32 ",
        "  batc: 32 ",
        "batc:",
        "connector mqtt_cloud: unknown key 'batc'; did you mean batch?",
    ),
    (
        "unknown-key-in-gateway",
        "gateway.yml",
        "  flush_ms: 100",
        "  flush_mss: 100",
        "flush_mss",
        "wal: unknown key 'flush_mss'; did you mean flush_ms?",
    ),
    (
        "unknown-key-nothing-close",
        "connector.yml",
        "  batch: 32 ",
        "  zzzzzz: 32 ",
        "zzzzzz",
        "connector mqtt_cloud: unknown key 'zzzzzz'",
    ),
    (
        "unknown-endpoint-id",
        "drivers.yml",
        "  endpoint_id: plc_tcp",
        "  endpoint_id: plc_tpc",
        "plc_tpc",
        "plc1: unknown endpoint_id 'plc_tpc'; did you mean plc_tcp?",
    ),
    (
        "unknown-driver-id",
        "variables.yml",
        "  driver_id: meter1",
        "  driver_id: metre1",
        "metre1",
        "meter1.voltage_v: unknown driver_id 'metre1'; did you mean meter1?",
    ),
    (
        "type-in-gateway",
        "gateway.yml",
        "  flush_ms: 100",
        "  flush_ms: soon",
        "flush_ms",
        "wal.flush_ms must be an integer, not 'soon'",
    ),
    (
        "minimum-in-gateway",
        "gateway.yml",
        "  flush_ms: 100",
        "  flush_ms: -1",
        "flush_ms",
        "wal.flush_ms: -1 is less than the minimum of 1",
    ),
    (
        "described-pattern",
        "endpoints.yml",
        "timeout: 1000ms",
        "timeout: 1 sec",
        "1 sec",
        "endpoint plc_tcp: opts.timeout '1 sec' is not a duration like 500ms, 1s, 2m, 1h, 1d",
    ),
]


@pytest.mark.parametrize(("fname", "old", "new", "needle", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_message_names_the_entry_and_suggests(
    demo_copy: Callable[..., Path], fname: str, old: str, new: str, needle: str, want: str
) -> None:
    d = demo_copy({fname: (old, new)})
    code, lines = lint(d)
    assert code == 1
    where = f"{d / fname}:{line_of(d / fname, needle)}: "
    assert where + want in lines, lines


def test_no_json_path_left_in_any_message(demo_copy: Callable[..., Path]) -> None:
    """The old shape `0/datatype:` or `rs485_0/opts/parity:` must not come back for any schema error."""
    d = demo_copy(
        {
            "variables.yml": ("  datatype: uint16\n  scale", "  datatype: [1]\n  scale"),
            "endpoints.yml": ("    stopbits: 1", "    stopbits: 7"),
            "drivers.yml": ("    retry: 3", "    retry: -3"),
        }
    )
    code, lines = lint(d)
    assert code == 1 and len(lines) >= 3, lines
    for x in lines:
        assert not re.search(r": [\w.]*/[\w/]+: ", x), x
        assert "is not of type" not in x and "Additional properties" not in x, x
