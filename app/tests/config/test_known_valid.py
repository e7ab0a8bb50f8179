"""Validation remembers scalars already found valid (config/schema.py _KnownValid), so 10 000 variables
are checked quickly; a remembered value never hides an error of a value that differs from it, in its
text or only in its type, nor one under another schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_gateway.config.loader import lint

TAIL = """
- tag: t.{n}
  driver_id: plc1
  address: {{ type: holding, addr: {addr} }}
  datatype: {datatype}
"""


def messages(d: Path) -> list[str]:
    return [p.message for p in lint(d) if p.severity == "error"]


def test_a_value_seen_valid_does_not_hide_a_near_one(demo_copy: Callable[..., Path]) -> None:
    d = demo_copy()
    entries = [(100, "uint16"), (101, "uint16"), (102, "unit16"), ("102.0", "uint16"), ("true", "uint16"),
               (70000, "uint16"), (103, "uint16")]  # fmt: skip
    with (d / "variables.yml").open("a") as f:
        for n, (addr, datatype) in enumerate(entries):
            f.write(TAIL.format(n=n, addr=addr, datatype=datatype))
    for _ in range(2):  # and again, with everything valid remembered from the first time
        got = messages(d)
        assert any(m.startswith("tag t.2: datatype 'unit16' is not one of") for m in got), got
        assert any(m.startswith("tag t.3: address.addr must be an integer, not 102.0") for m in got), got
        assert any(m.startswith("tag t.4: address.addr must be an integer, not True") for m in got), got
        assert any(m.startswith("tag t.5: address.addr: 70000 is greater than the maximum of 65535") for m in got), got
        assert not any("t.0" in m or "t.1" in m or "t.6" in m for m in got), got


def test_a_value_valid_under_one_schema_is_checked_under_another(demo_copy: Callable[..., Path]) -> None:
    """`holding` is a valid address type; as a datatype it is still refused."""
    d = demo_copy()
    with (d / "variables.yml").open("a") as f:
        f.write(TAIL.format(n=0, addr=100, datatype="holding"))
    assert any(m.startswith("tag t.0: datatype 'holding' is not one of") for m in messages(d)), messages(d)
