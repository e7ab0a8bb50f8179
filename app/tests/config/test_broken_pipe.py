"""`edge-cfg schema | head` (issue 20 item 2): a reader that leaves early gives exit 141 (128 + SIGPIPE)
and no traceback, for every command that prints a lot. Real processes, real pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EDGE_CFG = str(BIN / "edge-cfg")
EDGE_GATEWAY = str(BIN / "edge-gateway")
NOISE = ("Traceback", "BrokenPipeError", "Exception ignored")


def to_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run with stdout on a pipe whose read end is already closed: the first write fails."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)


@pytest.fixture
def broken(demo_copy: Callable[..., Path]) -> Path:
    return demo_copy({"endpoints.yml": ("    parity: E ", "    parity: X "), "drivers.yml": ("retry: 3", "retry: -1")})


@pytest.mark.parametrize("name", ["all", "variables"])
def test_schema_to_a_closed_pipe(name: str) -> None:
    r = to_closed_pipe([EDGE_CFG, "schema"] + ([] if name == "all" else [name]))
    assert r.returncode == 141 and r.stderr == "", r


def test_lint_to_a_closed_pipe(broken: Path) -> None:
    r = to_closed_pipe([EDGE_CFG, "lint", str(broken)])
    assert r.returncode == 141, r
    assert not any(n in r.stderr for n in NOISE), r.stderr


def test_diff_to_a_closed_pipe(demo_copy: Callable[..., Path]) -> None:
    a, b = demo_copy(name="a"), demo_copy({"drivers.yml": ("polling: 1s", "polling: 2s")}, name="b")
    r = to_closed_pipe([EDGE_CFG, "diff", str(a), str(b)])
    assert r.returncode == 141 and r.stderr == "", r


@pytest.mark.parametrize(
    "argv",
    [[EDGE_CFG, "--help"], [EDGE_CFG, "lint", "--help"], [EDGE_GATEWAY, "--help"], [EDGE_GATEWAY, "run", "--help"]],
    ids=["edge-cfg", "edge-cfg-lint", "edge-gateway", "edge-gateway-run"],
)
def test_help_to_a_closed_pipe_is_quiet(argv: list[str]) -> None:
    r = to_closed_pipe(argv)
    assert r.returncode in (0, 141) and r.stderr == "", r


def test_lint_into_head(demo_copy: Callable[..., Path]) -> None:
    """The reported case: `edge-cfg lint DIR | head -n 1`. 3000 bad tags print some 500 KB, far more
    than head reads plus what a pipe holds, so the writer is certain to meet the closed pipe."""
    d = demo_copy()
    tags = "".join(
        f"- {{tag: t{i}, driver_id: plc1, address: {{type: holding, addr: {i}}}, datatype: unit16}}\n"
        for i in range(3000)
    )
    (d / "variables.yml").write_text(tags)
    lint = subprocess.Popen([EDGE_CFG, "lint", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert lint.stdout is not None and lint.stderr is not None
    head = subprocess.Popen(["head", "-n", "1"], stdin=lint.stdout, stdout=subprocess.PIPE)
    lint.stdout.close()  # head alone holds the read end
    first, _ = head.communicate(timeout=120)
    err = lint.stderr.read().decode()
    assert lint.wait(timeout=120) == 141
    assert first.decode().count("\n") == 1 and "did you mean uint16?" in first.decode()
    assert not any(n in err for n in NOISE), err
