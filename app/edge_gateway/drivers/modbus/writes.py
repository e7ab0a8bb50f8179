"""The Modbus write rules, their single home: which tags may be written (the loader reports a
config that breaks them at its line), whether a cloud command's value fits (the runtime refuses the
command before it reaches a line), and the line's own last check before the bytes go out."""

from __future__ import annotations

import math

from edge_gateway.core.datatypes import FLOAT32_MAX, INT_RANGES
from edge_gateway.core.driver import Refused
from edge_gateway.core.frame import Value
from edge_gateway.drivers.modbus.model import Driver, Variable

WRITABLE_TABLES = ("holding", "coil")  # the only tables Modbus can write


def config_problem(var_access: str, table: str, driver: Driver | None) -> list[str]:
    """What is wrong with declaring a tag writable (access W/RW) on `table` of `driver` (empty: nothing)."""
    out: list[str] = []
    if "W" not in var_access:
        return out
    if table not in WRITABLE_TABLES:
        out.append(f"access {var_access} on a read-only {table} table")
    if driver is not None and not driver.modbus.enable_write:
        out.append(f"access {var_access} but driver {driver.id} does not have enable_write: true")
    return out


def check_command(var: Variable, driver: Driver | None, value: Value) -> None:
    """A cloud command on `var`: raises Refused(read_only | write_disabled | invalid_value | out_of_range)."""
    if not var.writable:
        raise Refused("read_only", f"{var.tag} has access {var.access}: not writable")
    if driver is None or not driver.modbus.enable_write:
        raise Refused("write_disabled", f"{var.tag}: driver {var.driver_id} does not have enable_write")
    if var.address.type not in WRITABLE_TABLES:
        raise Refused("read_only", f"{var.tag}: {var.address.type} registers cannot be written")
    check_value(var, value)


def line_refusal(var: Variable, driver: Driver | None) -> str | None:
    """The line's check just before it queues a write (the same rules, in its words)."""
    if driver is None:
        return None
    if not driver.modbus.enable_write:
        return f"driver {var.driver_id} does not have enable_write"
    if not var.writable or var.address.type not in WRITABLE_TABLES:
        return f"{var.tag} is not writable"
    return None


def check_value(var: Variable, value: Value) -> None:
    """Raises Refused(invalid_value | out_of_range) when `value` cannot be written to `var`."""
    dt = var.datatype
    if value is None:
        raise Refused("invalid_value", f"{var.tag}: value is null")
    if dt == "bool":
        if type(value) is bool or (type(value) is int and value in (0, 1)):
            return
        raise Refused("invalid_value", f"{var.tag}: bool tag needs true/false (or 0/1), got {value!r}")
    if dt == "string":
        if not isinstance(value, str):
            raise Refused("invalid_value", f"{var.tag}: string tag needs a string")
        if not value.isascii():
            raise Refused("invalid_value", f"{var.tag}: only ASCII strings can be written")
        if len(value) > 2 * var.address.len:
            raise Refused("out_of_range", f"{var.tag}: {len(value)} characters do not fit {var.address.len} registers")
        return
    if dt == "binary":
        if not isinstance(value, bytes):
            raise Refused("invalid_value", f'{var.tag}: binary tag needs {{"b64": "…"}}')
        if len(value) > 2 * var.address.len:
            raise Refused("out_of_range", f"{var.tag}: {len(value)} bytes do not fit {var.address.len} registers")
        return
    if type(value) not in (int, float):
        raise Refused("invalid_value", f"{var.tag}: {dt} tag needs a number, got {type(value).__name__}")
    if type(value) is int and abs(value) > FLOAT32_MAX and dt != "float64":
        raise Refused("out_of_range", f"{var.tag}: {value} is outside {dt}")  # and math.isfinite would overflow
    if type(value) is int and abs(value) >= 1 << 1024:
        raise Refused("out_of_range", f"{var.tag}: {value} is outside {dt}")
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise Refused("invalid_value", f"{var.tag}: value must be finite")
    raw: float | int = value  # type: ignore[assignment]
    if var.scale is not None:
        try:
            raw = var.scale.inverse(float(value))  # type: ignore[arg-type]
        except (ValueError, ArithmeticError) as e:
            raise Refused("invalid_value", f"{var.tag}: {e}") from None
    if dt in INT_RANGES:
        r = round(raw)
        if not math.isclose(raw, r, rel_tol=1e-9, abs_tol=1e-6):
            what = f"raw value {raw!r} after scale {var.scale.source!r}" if var.scale else f"{raw!r}"
            raise Refused("invalid_value", f"{var.tag}: {what} is not an integer ({dt})")
        lo, hi = INT_RANGES[dt]
        if not lo <= r <= hi:
            raise Refused("out_of_range", f"{var.tag}: raw value {r} is outside {dt} [{lo}, {hi}]")
    elif dt == "float32" and abs(raw) > FLOAT32_MAX:
        raise Refused("out_of_range", f"{var.tag}: {raw!r} is outside float32")
