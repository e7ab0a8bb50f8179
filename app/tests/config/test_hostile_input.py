"""Hostile or broken files through the real `edge-cfg lint` process (issue 14, items 4, 5, 11): every
input ends in exit 0 or 1 with only `file:line: message` lines on stdout — never a signal, never a
traceback — and the lint rules a schema cannot say (zero periods, float QoS, constant division
by zero, missing password files) are errors at their line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import line_of

EDGE_CFG = Path(sys.executable).parent / "edge-cfg"
# The lint output contract (tools/fuzz/fuzz_config.py checks the same): stdout is only problem lines,
# stderr only the one summary line.
PROBLEM_LINE = re.compile(r"^[^\n]+\.yml:[1-9][0-9]*: (warning: )?\S.*$")


def lint(directory: Path) -> tuple[int, list[str]]:
    """Run `edge-cfg lint`; assert the output contract; return (exit code, stdout lines)."""
    r = subprocess.run([str(EDGE_CFG), "lint", str(directory)], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), f"exit {r.returncode} (a negative code is a signal)\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    for line in lines:
        assert PROBLEM_LINE.match(line), f"not a file:line problem: {line[:300]!r}"
        assert line.isprintable(), f"invisible or control characters: {line[:300]!r}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.splitlines() == [r.stderr.splitlines()[-1]], r.stderr[-3000:]
    assert re.match(r".*: \d+ error\(s\), \d+ warning\(s\)$", r.stderr.strip()), r.stderr
    return r.returncode, lines


def write(d: Path, fname: str, data: str | bytes) -> Path:
    p = d / fname
    if isinstance(data, str):
        data = data.encode()
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[" * 100_000, 1),  # libyaml's composer recursed into SIGSEGV
        ("{a: " * 50_000, 1),
        ("- " * 100_000 + "x\n", 1),  # block sequences nest on one line too
        ("".join(" " * i + "k:\n" for i in range(300)), 33),  # block mappings by indentation
    ],
    ids=["flow-seq", "flow-map", "block-seq", "block-map"],
)
def test_deep_nesting_is_an_error_at_its_line(demo_copy: Callable[..., Path], text: str, line: int) -> None:
    d = demo_copy()
    write(d, "endpoints.yml", text)
    code, lines = lint(d)
    assert code == 1
    assert any(re.match(rf".*endpoints\.yml:{line}: nested deeper than 32 levels$", x) for x in lines), lines


def test_huge_integer_is_an_error_at_its_line(demo_copy: Callable[..., Path]) -> None:
    d = demo_copy({"drivers.yml": ("unit_id: 1\n", "unit_id: " + "9" * 5000 + "\n")})
    code, lines = lint(d)
    assert code == 1
    line = line_of(d / "drivers.yml", "unit_id: 999")
    assert any(f"drivers.yml:{line}: an integer of 5000 characters" in x for x in lines), lines


def test_base60_integer_too_long_to_print(demo_copy: Callable[..., Path]) -> None:
    """`59:59:…` is one YAML 1.1 integer; thousands of parts make one Python cannot print."""
    d = demo_copy({"endpoints.yml": ("port: 15020", "port: " + ":".join(["59"] * 3000))})
    code, lines = lint(d)
    assert code == 1 and any("endpoints.yml:" in x and "an integer of" in x for x in lines), lines


@pytest.mark.parametrize(
    ("fname", "text", "want"),
    [
        ("endpoints.yml", "42\n", "the top level must be a mapping, not 42"),
        ("drivers.yml", "42\n", "the top level must be a mapping, not 42"),
        ("connector.yml", "- a\n- b\n", "the top level must be a mapping, not ['a', 'b']"),
        ("gateway.yml", "just text\n", "the top level must be a mapping, not 'just text'"),
        ("variables.yml", "{a: 1}\n", "the top level must be a list, not {'a': 1}"),
    ],
)
def test_scalar_or_wrong_type_as_a_table(demo_copy: Callable[..., Path], fname: str, text: str, want: str) -> None:
    d = demo_copy()
    write(d, fname, text)
    code, lines = lint(d)
    assert code == 1
    assert any(x.endswith(f"{fname}:1: {want}") for x in lines), lines


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b'plc_tcp:\n  scheme: tcp\n  host: "a\x00b"\n', "endpoints.yml:3: character U+0000 is not allowed"),
        (b"plc_tcp:\n  scheme: tcp\x07\n", "endpoints.yml:2: character U+0007 is not allowed"),
        (b"plc_tcp:\n\n\n  host: \xff\xfe\n", "endpoints.yml:4: not UTF-8 text"),
    ],
    ids=["nul", "bel", "not-utf8"],
)
def test_control_characters_give_one_line_with_file_and_line(
    demo_copy: Callable[..., Path], data: bytes, want: str
) -> None:
    d = demo_copy()
    write(d, "endpoints.yml", data)
    code, lines = lint(d)
    assert code == 1
    assert any(want in x for x in lines), lines


def test_bidi_overrides_and_odd_spaces_in_keys_are_escaped(demo_copy: Callable[..., Path]) -> None:
    """Mutant 198 of the first fuzz run: a key echoed raw in the path of a message."""
    d = demo_copy()
    write(d, "connector.yml", '"\\xa0mqtt\\u202e_cloud": 5\n')
    code, lines = lint(d)
    assert code == 1
    assert any("connector.yml:1: connector \\xa0mqtt\\u202e_cloud must be a mapping, not 5" in x for x in lines), lines


def test_control_characters_in_echoed_values_are_escaped(demo_copy: Callable[..., Path]) -> None:
    """A quoted id with an escaped newline is echoed in messages: still one line per problem."""
    d = demo_copy()
    write(d, "endpoints.yml", '"bad\\nid\\u2028x":\n  scheme: tcp\n  host: h\n  port: 1\n')
    code, lines = lint(d)
    assert code == 1
    assert any("endpoints.yml:1: 'bad\\nid\\u2028x' is not an id" in x for x in lines), lines


@pytest.mark.parametrize(
    "text",
    ["!!int abc\n", "!!bool maybe\n", "x: !!float nope\n", "when: 2026-13-45\n", "!!binary '%%%'\n"],
)
def test_values_pyyaml_cannot_construct(demo_copy: Callable[..., Path], text: str) -> None:
    d = demo_copy()
    write(d, "gateway.yml", "\n" + text)
    code, lines = lint(d)
    assert code == 1
    assert any("gateway.yml:2: " in x for x in lines), lines


@pytest.mark.parametrize("key", ["1", "on", "~", "[a, b]", "3.5"])
def test_keys_that_are_not_names(demo_copy: Callable[..., Path], key: str) -> None:
    d = demo_copy()
    write(d, "endpoints.yml", f"{key}:\n  scheme: tcp\n  host: h\n  port: 1\n")
    code, lines = lint(d)
    assert code == 1
    assert any("endpoints.yml:1: key " in x and "not a name: quote it" in x for x in lines), lines


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_table_that_is_not_a_regular_file(demo_copy: Callable[..., Path], kind: str) -> None:
    """A FIFO named drivers.yml would block lint (and the reload thread) in read() forever."""
    d = demo_copy()
    (d / "drivers.yml").unlink()
    if kind == "fifo":
        os.mkfifo(d / "drivers.yml")
    else:
        (d / "drivers.yml").mkdir()
    code, lines = lint(d)
    assert code == 1 and any("drivers.yml:1: cannot read: " in x for x in lines), lines


def test_oversized_file(demo_copy: Callable[..., Path]) -> None:
    d = demo_copy()
    write(d, "variables.yml", b"# " + b"x" * (33 << 20) + b"\n")
    code, lines = lint(d)
    assert code == 1 and any("variables.yml:1: larger than 32 MiB" in x for x in lines), lines


# -- lint rules (item 11) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fname", "old", "new", "want"),
    [
        ("variables.yml", 'scale: "value / 10"', 'scale: "value / 0"', "scale: division by zero"),
        ("variables.yml", 'scale: "value / 10"', 'scale: "value % (2 - 2)"', "scale: division by zero (2 - 2 is 0)"),
        ("variables.yml", 'scale: "value / 10"', 'scale: "1e309 * value"', "scale: 1e309 is inf, not a finite"),
        ("variables.yml", 'scale: "value / 10"', 'scale: "value * 1e300 ** 2"', "overflows a float"),
        ("drivers.yml", "polling: 1s", "polling: 0s", "driver plc1: cfg.polling '0s' is zero; it must be positive"),
        ("drivers.yml", "polling: 1s", "polling: 0ms", "driver plc1: cfg.polling '0ms' is zero"),
        ("endpoints.yml", "timeout: 1000ms", "timeout: 0ms", "endpoint plc_tcp: opts.timeout '0ms' is zero"),
        ("endpoints.yml", "rate: 200pps", "rate: 0pps", "endpoint plc_tcp: opts.rate '0pps' is zero"),
        ("connector.yml", "keepalive: 30s", "keepalive: 0s", "connector mqtt_cloud: keepalive '0s' is zero"),
        ("connector.yml", "base: 500ms", "base: 0ms", "connector mqtt_cloud: backoff.base '0ms' is zero"),
        ("connector.yml", "qos: 2 ", "qos: -0.0 ", "connector mqtt_cloud: qos must be an integer, not -0.0"),
        ("connector.yml", "qos: 2 ", "qos: 1.0 ", "connector mqtt_cloud: qos must be an integer, not 1.0"),
        ("drivers.yml", "unit_id: 1\n", "unit_id: 1.0\n", "driver plc1: cfg.unit_id must be an integer, not 1.0"),
        (
            "connector.yml",
            "  # password_file: secrets/mqtt.pass",
            "  password_file: secrets/mqtt.pass",
            "connector mqtt_cloud: password_file: ",
        ),
    ],
)
def test_lint_rule(demo_copy: Callable[..., Path], fname: str, old: str, new: str, want: str) -> None:
    d = demo_copy({fname: (old, new)})
    code, lines = lint(d)
    assert code == 1, lines
    line = line_of(d / fname, new.strip().split("\n")[0])
    assert any(f"{fname}:{line}: " in x and want in x for x in lines), (line, lines)


def test_missing_password_file_says_where_it_was_looked_for(demo_copy: Callable[..., Path]) -> None:
    d = demo_copy({"connector.yml": ("  # password_file: secrets/mqtt.pass", "  password_file: secrets/mqtt.pass")})
    _, lines = lint(d)
    assert any(f"{d / 'secrets/mqtt.pass'} does not exist" in x for x in lines), lines
    (d / "secrets").mkdir()
    (d / "secrets/mqtt.pass").write_text("pw\n")
    assert lint(d) == (0, [])


def test_the_demo_config_still_lints_clean(demo_copy: Callable[..., Path]) -> None:
    assert lint(demo_copy()) == (0, [])


@pytest.mark.parametrize(
    ("fname", "old", "new"),
    [
        ("drivers.yml", "proto: modbus", "proto: {a: 1}"),
        ("drivers.yml", "kind: static", "kind: [dyn]"),
        ("endpoints.yml", "scheme: tcp", "scheme: {a: 1}"),
    ],
    ids=["proto-mapping", "kind-list", "scheme-mapping"],
)
def test_a_plugin_selector_of_the_wrong_type_is_a_schema_error(
    demo_copy: Callable[..., Path], fname: str, old: str, new: str
) -> None:
    """The config fuzzer's mutant 80 after the plugin seam: `proto: {…}` reached a set lookup (TypeError)."""
    d = demo_copy({fname: (old, new)})
    code, lines = lint(d)
    assert code == 1 and lines, lines


@pytest.mark.parametrize(("dt", "hint"), [("double", "; use float64"), ("float", "; use float32"), ("datetime", "")])
def test_opc_ua_datatype_names_on_a_modbus_tag_are_an_error(demo_copy: Callable[..., Path], dt: str, hint: str) -> None:
    """float/double/datetime entered the one datatype table for OPC UA; a register cannot hold a datetime,
    and the codec decodes only its own names (a `double` would have come out as raw bytes)."""
    d = demo_copy({"variables.yml": ("datatype: float32", f"datatype: {dt}")})
    code, lines = lint(d)
    line = line_of(d / "variables.yml", f"datatype: {dt}")
    assert code == 1
    assert any(
        f"variables.yml:{line}: " in x and f"datatype {dt} is not one a Modbus register holds{hint}" in x for x in lines
    ), lines
