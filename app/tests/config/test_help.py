"""`--help` of edge-cfg and edge-gateway (issue 20 item 4): every option and argument with a text, and
the exit codes; the codes it promises are the ones the processes return. Real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EDGE_CFG = str(BIN / "edge-cfg")
EDGE_GATEWAY = str(BIN / "edge-gateway")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, env=env)


def entries(help_text: str) -> dict[str, str]:
    """Each `-x, --xx ARG   text` or `  NAME   text` entry of the argument sections → its text."""
    out: dict[str, str] = {}
    section = False
    current = None
    for line in help_text.splitlines():
        if line in ("options:", "positional arguments:"):
            section, current = True, None
            continue
        if not line.startswith(" "):  # a blank line or the next heading ends the section
            section, current = False, None
            continue
        if not section:
            continue
        m = re.match(r"^  (\S(?:.*?\S)?)(?: {2,}(.*))?$", line)
        if m and not line.startswith("   "):
            current = m.group(1)
            out[current] = (m.group(2) or "").strip()
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


ETCD_OPTS = ["--etcd-ca", "--etcd-cert", "--etcd-key", "--etcd-user", "--etcd-password-file", "--timeout"]
HELP = [
    ((EDGE_CFG,), ["-h", "COMMAND"], ["0", "1", "2", "3", "141"]),
    ((EDGE_CFG, "lint"), ["-h", "DIR"], ["0", "1", "2", "141"]),
    ((EDGE_CFG, "schema"), ["-h", "NAME"], ["0", "1", "2", "141"]),
    ((EDGE_CFG, "diff"), ["-h", "OLD", "NEW", "--etcd-ca", "--etcd-user"], ["0", "1", "2", "141"]),
    ((EDGE_CFG, "plugins"), ["-h", "--json"], ["0", "1", "2", "141"]),
    # config/etcd/cli.py: every etcd command takes the URL and the TLS/credential options
    *(
        ((EDGE_CFG, *cmd), ["-h", *names, "URL", *ETCD_OPTS], ["0", "1", "2", "3", "141"])
        for cmd, names in (
            (("push",), ["DIR", "--message", "--max-request-bytes"]),
            (("watch",), ["--from-revision", "--count", "--json"]),
            (("history",), ["--limit", "--json"]),
            (("rollback",), ["TABLE", "--to", "--no-lint"]),
            (("fleet", "status"), ["--json"]),
        )
    ),
    ((EDGE_GATEWAY,), ["-h", "--version", "COMMAND"], ["0", "1", "2", "141"]),
    ((EDGE_GATEWAY, "run"), ["-h", "--config", "--log-level", "--log-format"], ["0", "1", "2", "141"]),
]


@pytest.mark.parametrize(("cmd", "names", "codes"), HELP, ids=[" ".join([Path(h[0][0]).name, *h[0][1:]]) for h in HELP])
def test_help_names_every_option_with_a_text_and_the_exit_codes(
    cmd: tuple[str, ...], names: list[str], codes: list[str]
) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0 and r.stderr == "", r
    found = entries(r.stdout)
    usage = r.stdout.split("\n\n", 1)[0]
    in_usage = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", usage))
    for name in names:
        assert any(k.split()[0].rstrip(",") == name or f" {name}" in f" {k}" for k in found), (name, found)
    for key, text in found.items():
        if key.split()[0] != "COMMAND":
            assert text, f"{key!r} has no help text:\n{r.stdout}"
    for opt in in_usage:
        assert any(opt in k.replace(",", " ").split() for k in found), (opt, found)
    assert "exit codes:" in r.stdout
    listed = re.findall(r"^  ([0-9]+) +\S", r.stdout.split("exit codes:", 1)[1], re.M)
    assert listed == codes, listed


def test_edge_gateway_run_help_shows_the_log_level_values_and_the_environment() -> None:
    r = run(EDGE_GATEWAY, "run", "--help")
    text = " ".join(r.stdout.split())
    assert "debug, info, warning, error, critical" in text and "EDGE_GATEWAY_LOG_LEVEL" in text


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_bad_log_level_is_a_usage_error_not_a_traceback(demo_copy: Callable[..., Path], how: str) -> None:
    """Exit 2 as the help says; `--log-level verbose` used to end in a ValueError traceback."""
    d = demo_copy()
    if how == "option":
        r = run(EDGE_GATEWAY, "run", "--config", str(d), "--log-level", "verbose")
    else:
        r = run(EDGE_GATEWAY, "run", "--config", str(d), env={**os.environ, "EDGE_GATEWAY_LOG_LEVEL": "verbose"})
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and "'verbose' is not a log level" in r.stderr, r.stderr


def test_edge_gateway_exit_2_on_an_invalid_config(demo_copy: Callable[..., Path]) -> None:
    d = demo_copy({"variables.yml": ("  datatype: uint16\n  scale", "  datatype: unit16\n  scale")})
    r = run(EDGE_GATEWAY, "run", "--config", str(d), "--log-format", "text")
    assert r.returncode == 2, r
    assert "variables.yml:10: tag plant.flow_m3h: datatype 'unit16' is not one of" in r.stderr


def test_edge_cfg_exit_codes_as_documented(demo_copy: Callable[..., Path]) -> None:
    good = demo_copy(name="good")
    bad = demo_copy({"drivers.yml": ("retry: 3", "retry: -1")}, name="bad")
    assert run(EDGE_CFG, "lint", str(good)).returncode == 0
    assert run(EDGE_CFG, "lint", str(bad)).returncode == 1
    assert run(EDGE_CFG, "schema", "drivers").returncode == 0
    assert run(EDGE_CFG, "schema", "nope").returncode == 2
    assert run(EDGE_CFG, "lint").returncode == 2
    changed = demo_copy({"drivers.yml": ("polling: 1s", "polling: 2s")}, name="changed")
    r = run(EDGE_CFG, "diff", str(good), str(changed))
    assert r.returncode == 0 and r.stdout.strip() == "drivers changed: plc1", r
    r = run(EDGE_CFG, "diff", str(good), str(bad))
    assert r.returncode == 1 and "drivers.yml:" in r.stderr and r.stdout == "", r
