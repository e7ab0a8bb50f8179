"""Downlink: cloud commands → validated Modbus writes → one ack for every command.

A command arrives on `cmd_topic` (the tag is the `{tag}` level) with a JSON payload
`{"seq": 123, "value": 42.0, "meta": {…}, "ttl": "5s", "ts": 1700000000000}` (`meta`, `ttl`, `ts`
optional). It is executed only when every check passes, in this order, before anything reaches a
line: well-formed JSON with an integer `seq` → not retained (a retained command would run again on
every reconnect) → the tag exists → access W/RW → its driver has `enable_write` → the register table
is writable (holding/coil) → the value fits the datatype after the inverse scale → not expired.

TTL: `ttl` is a duration ("5s", "500ms") or a number of seconds. With `ts` (ms since the epoch, the
sender's clock) the command expires at `ts + ttl`; without it, at its arrival + ttl. Commands the
broker kept for us during an outage therefore need `ts` to expire (or the MQTT5 message expiry,
which the broker enforces). Expiry is checked on arrival and again just before the write is handed
to the line.

Every command gets an ack on `ack_topic` with `{seq}` filled: `{"result": "ok"|"fail", "ts": ms,
"error": null|"…", "tag": …, "seq": …}` — refused and malformed ones included, as long as a seq can
be read (a payload that is not JSON is still searched for `"seq": N`). Every command is counted in
`connector_cmd_total{result,reason}` and recorded in the WAL as Kind.CMD frames (one on arrival, one
with the outcome) for audit; the uplink never sends CMD frames as data and nothing replays them.

The Modbus write runs on the owning line's thread; its Future's callback produces the ack, so the
MQTT thread never waits for a device.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from edge_gateway.acquisition.mqtt.mapping import may_produce
from edge_gateway.bus.frame import GOOD, Frame, Kind, Value, bad, now_ms
from edge_gateway.config.model import WRITABLE_TYPES, Snapshot, Variable
from edge_gateway.config.units import parse_duration
from edge_gateway.uplink import metrics
from edge_gateway.uplink.codec import B64

log = logging.getLogger(__name__)

INT_RANGES = {
    "uint16": (0, 0xFFFF),
    "int16": (-0x8000, 0x7FFF),
    "uint32": (0, 0xFFFF_FFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "int64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}
FLOAT32_MAX = 3.4028234663852886e38
_SEQ_RE = re.compile(rb'"seq"\s*:\s*(-?[0-9]+)')

Submit = Callable[[Variable, Value], "Future[None]"]


@dataclass(frozen=True)
class Ack:
    seq: int | None  # None: nothing to ack to (no seq could be read); counted only
    tag: str
    result: str  # ok | fail
    reason: str  # none | malformed | unknown_tag | ... (a bounded set: it is a metric label)
    error: str | None = None
    ts: int = 0

    def payload(self) -> bytes:
        body = {"result": self.result, "ts": self.ts or now_ms(), "error": self.error, "tag": self.tag, "seq": self.seq}
        return json.dumps(body, separators=(",", ":")).encode()


class Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Command:
    seq: int
    tag: str
    value: Value
    meta: dict[str, Any] | None
    deadline_ms: int | None  # ms since the epoch; None = no ttl
    arrival_ms: int


def parse(tag: str, payload: bytes, arrival_ms: int) -> Command:
    """Payload → Command; raises Refused("malformed", …) with the reason in words."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused("malformed", f"payload is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise Refused("malformed", "payload must be a JSON object")
    seq = body.get("seq")
    if type(seq) is not int or seq < 0:
        raise Refused("malformed", '"seq" must be a non-negative integer')
    unknown = set(body) - {"seq", "value", "meta", "ttl", "ts", "tag"}
    if unknown:
        raise Refused("malformed", f"unknown field(s): {', '.join(sorted(unknown))}")
    if "tag" in body and body["tag"] != tag:
        raise Refused("malformed", f'"tag" {body["tag"]!r} does not match the topic\'s tag {tag!r}')
    if "value" not in body:
        raise Refused("malformed", '"value" is missing')
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise Refused("malformed", '"meta" must be an object')
    value = _value(body["value"])
    deadline = None
    if "ttl" in body:
        try:
            ttl = parse_duration(body["ttl"])
        except (ValueError, TypeError, AttributeError) as e:
            raise Refused("malformed", f'"ttl": {e}') from None
        if ttl < 0 or not math.isfinite(ttl):
            raise Refused("malformed", '"ttl" must be a positive duration')
        base = body.get("ts", arrival_ms)
        if type(base) is not int:
            raise Refused("malformed", '"ts" must be an integer (ms since the epoch)')
        deadline = base + int(ttl * 1000)
    elif "ts" in body and type(body["ts"]) is not int:
        raise Refused("malformed", '"ts" must be an integer (ms since the epoch)')
    return Command(seq, tag, value, meta, deadline, arrival_ms)


def _value(v: Any) -> Value:
    if isinstance(v, dict):
        if set(v) == {B64} and isinstance(v[B64], str):
            try:
                return base64.b64decode(v[B64], validate=True)
            except (binascii.Error, ValueError) as e:
                raise Refused("malformed", f'"value": bad base64: {e}') from None
        raise Refused("malformed", '"value" must be a number, boolean, string or {"b64": "…"}')
    if isinstance(v, list):
        raise Refused("malformed", '"value" must be a number, boolean, string or {"b64": "…"}')
    return v  # type: ignore[no-any-return]


def salvage_seq(payload: bytes) -> int | None:
    """The seq of a payload that is not valid JSON, when it plainly contains one."""
    m = _SEQ_RE.search(payload[:4096])
    return int(m.group(1)) if m and int(m.group(1)) >= 0 else None


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


class Downlink:
    """Validates commands against the running snapshot and routes them to `submit`.

    `handle` runs on the MQTT thread and returns at once; `done(ack)` is called exactly once per
    command, from the MQTT thread (refusals) or from a line thread (write outcome)."""

    def __init__(
        self,
        connector_id: str,
        snapshot: Callable[[], Snapshot],
        submit: Submit | None,
        record: Callable[[list[Frame]], int] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.connector_id = connector_id
        self._snapshot = snapshot
        self._submit = submit
        self._record = record
        self.timeout = timeout
        self.accepting = True
        self._pending: dict[int, tuple[float, Command, Future[None], Callable[[Ack], None]]] = {}
        self._lock = threading.Lock()
        self._n = 0

    # -- arrival, on the MQTT thread -------------------------------------------------------------------
    def handle(self, tag: str, payload: bytes, retained: bool, done: Callable[[Ack], None]) -> None:
        arrival = now_ms()
        try:
            cmd = parse(tag, payload, arrival)
        except Refused as e:
            seq = salvage_seq(payload)
            self._finish(done, Ack(seq, tag, "fail", e.reason, str(e)), value=None, stage="received")
            return
        try:
            if retained:
                raise Refused("retained", "retained command refused: it would run again on every reconnect")
            if not self.accepting:
                raise Refused("unavailable", "gateway is shutting down")
            var = self._validate(cmd)
        except Refused as e:
            self._finish(done, Ack(cmd.seq, tag, "fail", e.reason, str(e)), cmd.value, "received", cmd)
            return
        self._write(cmd, var, done)

    def _validate(self, cmd: Command) -> Variable:
        snap = self._snapshot()
        var = snap.variable(cmd.tag)
        if var is None:
            if any(may_produce(t.tag, cmd.tag) for t in snap.mqtt_tags):
                raise Refused("read_only", f"{cmd.tag} comes from an MQTT source: not writable")
            raise Refused("unknown_tag", f"unknown tag {cmd.tag!r}")
        if not var.writable:
            raise Refused("read_only", f"{cmd.tag} has access {var.access}: not writable")
        driver = snap.drivers.get(var.driver_id)
        if driver is None or not driver.modbus.enable_write:
            raise Refused("write_disabled", f"{cmd.tag}: driver {var.driver_id} does not have enable_write")
        if var.address.type not in WRITABLE_TYPES:
            raise Refused("read_only", f"{cmd.tag}: {var.address.type} registers cannot be written")
        check_value(var, cmd.value)
        self._check_ttl(cmd)
        return var

    @staticmethod
    def _check_ttl(cmd: Command) -> None:
        if cmd.deadline_ms is not None and now_ms() >= cmd.deadline_ms:
            raise Refused("expired", f"command expired {now_ms() - cmd.deadline_ms} ms ago")

    def _write(self, cmd: Command, var: Variable, done: Callable[[Ack], None]) -> None:
        self._record_frame(cmd.tag, cmd.value, cmd, "received", "accepted", None, None)
        try:
            if self._submit is None:
                raise Refused("unavailable", "no line accepts writes in this process")
            self._check_ttl(cmd)
            fut = self._submit(var, cmd.value)
        except Refused as e:
            self._finish(done, Ack(cmd.seq, cmd.tag, "fail", e.reason, str(e)), cmd.value, "done", cmd)
            return
        except Exception as e:  # noqa: BLE001 - any failure to queue is reported on the ack
            self._finish(done, Ack(cmd.seq, cmd.tag, "fail", "unavailable", str(e)), cmd.value, "done", cmd)
            return
        with self._lock:
            self._n += 1
            key = self._n
            self._pending[key] = (time.monotonic() + self.timeout, cmd, fut, done)
        fut.add_done_callback(lambda f, key=key: self._completed(key, f))  # type: ignore[misc]

    # -- completion, on the line thread -----------------------------------------------------------------
    def _completed(self, key: int, fut: Future[None]) -> None:
        with self._lock:
            entry = self._pending.pop(key, None)
        if entry is None:
            return  # already answered by the timeout
        _, cmd, _, done = entry
        if fut.cancelled():
            ack = Ack(cmd.seq, cmd.tag, "fail", "timeout", "write cancelled")
        elif (exc := fut.exception()) is not None:
            ack = Ack(cmd.seq, cmd.tag, "fail", "write_error", str(exc) or type(exc).__name__)
        else:
            ack = Ack(cmd.seq, cmd.tag, "ok", "none")
        self._finish(done, ack, cmd.value, "done", cmd)

    def expire(self) -> None:
        """Answer writes a line has not finished within `timeout` (a hung line must not leave the
        cloud without an ack). The write may still happen later; the ack says it timed out."""
        now = time.monotonic()
        with self._lock:
            late = [k for k, (t, *_rest) in self._pending.items() if now >= t]
            entries = [self._pending.pop(k) for k in late]
        for _, cmd, fut, done in entries:
            fut.cancel()
            ack = Ack(cmd.seq, cmd.tag, "fail", "timeout", f"no answer from the line within {self.timeout:g}s")
            self._finish(done, ack, cmd.value, "done", cmd)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- outcome ------------------------------------------------------------------------------------------
    def _finish(
        self,
        done: Callable[[Ack], None],
        ack: Ack,
        value: Value,
        stage: str,
        cmd: Command | None = None,
    ) -> None:
        ack = Ack(ack.seq, ack.tag, ack.result, ack.reason, ack.error, now_ms())
        metrics.CMD.labels(connector=self.connector_id, result=ack.result, reason=ack.reason).inc()
        level = logging.INFO if ack.result == "ok" else logging.WARNING
        log.log(
            level,
            "command %s on %s: %s",
            ack.seq,
            ack.tag,
            ack.result if ack.error is None else f"{ack.result}: {ack.error}",
            extra={"cmd_seq": ack.seq, "tag": ack.tag, "result": ack.result, "reason": ack.reason},
        )
        self._record_frame(ack.tag, value, cmd, stage, ack.result, ack.reason, ack.error, ack.seq)
        done(ack)

    def _record_frame(
        self,
        tag: str,
        value: Value,
        cmd: Command | None,
        stage: str,
        result: str,
        reason: str | None,
        error: str | None,
        seq: int | None = None,
    ) -> None:
        if self._record is None:
            return
        meta: dict[str, object] = {"cmd_seq": cmd.seq if cmd else seq, "stage": stage, "result": result}
        if reason and reason != "none":
            meta["reason"] = reason
        if error:
            meta["error"] = error
        if cmd is not None and cmd.meta:
            meta["cmd_meta"] = cmd.meta
        if cmd is not None and cmd.deadline_ms is not None:
            meta["deadline"] = cmd.deadline_ms
        if not isinstance(value, bool | int | float | str | bytes):
            value = None
        q = GOOD if result in ("ok", "accepted") else bad(reason or "refused")
        self._record([Frame(0, now_ms(), tag, value, q, Kind.CMD, meta)])
