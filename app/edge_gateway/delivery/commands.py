"""Downlink: cloud commands → writes validated by the owning driver plugin → one ack for every command.

A command arrives on `cmd_topic` (the tag is the `{tag}` level) with a JSON payload
`{"seq": 123, "value": 42.0, "meta": {…}, "ttl": "5s", "ts": 1700000000000}` (`meta`, `ttl`, `ts`
optional). It is executed only when every check passes, in this order, before anything reaches a
line: well-formed JSON with an integer `seq` → not retained (a retained command would run again on
every reconnect) → the runtime's `Writes.resolve` asks the driver plugin that owns the tag (for Modbus:
the tag exists → access W/RW → its device has `enable_write` → the register table is writable
(holding/coil) → the value fits the datatype after the inverse scale) → not expired. This module
imports nothing of the drivers: the rules live with each plugin (core/driver.py).

TTL: `ttl` is a duration ("5s", "500ms") or a number of seconds. With `ts` (ms since the epoch, the
sender's clock) the command expires at `ts + ttl`; without it, at its arrival + ttl. Commands the
broker kept for us during an outage therefore need `ts` to expire (or the MQTT5 message expiry,
which the broker enforces). Expiry is checked on arrival and again just before the write is handed
to the line.

Every command gets an ack on `ack_topic` with `{seq}` filled: `{"result": "ok"|"fail", "ts": ms,
"error": null|"…", "tag": …, "seq": …}` — refused and malformed ones included, as long as a seq can
be read (a payload that is not JSON is still searched for `"seq": N`). Every command is counted in
`connector_cmd_total{result,reason}` and recorded in the WAL as Kind.CMD frames (one on arrival, one
with the outcome; the command's `meta` only in the first) for audit; the uplink never sends CMD
frames as data and nothing replays them.

Hostile input: a payload above `max_bytes` (connector.yml `cmd_max_bytes`, 64 KiB) is refused
`too_large` before it is parsed; nesting deeper than MAX_DEPTH is refused `malformed` before
`json.loads` sees it (a recursive decoder would blow the stack); any other failure while parsing or
validating is a refusal too (`malformed`, or `internal` for a bug) — nothing raises into the MQTT
thread. Replays: a seq seen before (the last `cmd_dedup` seqs, kept across restarts by a
`SeqLedger` file) is answered with its first outcome and never executed again; the same seq with
another tag or value is refused `seq_reused`. Refusals are logged at WARNING for the first
LOG_FIRST of every LOG_EVERY seconds, then summed up in one line per interval (all are counted).

The write runs on the owning worker's thread; its Future's callback produces the ack, so the
MQTT thread never waits for a device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
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

from edge_gateway.config.units import parse_duration
from edge_gateway.core.driver import Refused, Writes, WriteTarget
from edge_gateway.core.frame import GOOD, Frame, Kind, Value, bad, now_ms
from edge_gateway.delivery import metrics
from edge_gateway.delivery.codec import B64
from edge_gateway.delivery.ledger import PENDING, Entry, SeqLedger

log = logging.getLogger(__name__)

_SEQ_RE = re.compile(rb'"seq"\s*:\s*(-?[0-9]{1,19})(?![0-9])')
SEQ_MAX = (1 << 63) - 1
MAX_BYTES = 64 * 1024  # default bound of a command payload (connector.yml cmd_max_bytes)
MAX_DEPTH = 16  # deepest JSON nesting accepted (the command object itself is level 1)
LOG_FIRST = 10  # refusals logged at WARNING per interval …
LOG_EVERY = 60.0  # … of this many seconds; the rest are summed up in one line
# Refusals that say nothing about the command itself: it never reached a line, so a retry with the
# same seq may still run. Everything else is remembered as the seq's outcome.
TRANSIENT = frozenset({"unavailable", "retained", "malformed", "too_large", "seq_reused", "internal"})


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


@dataclass
class Command:
    seq: int
    tag: str
    value: Value
    meta: dict[str, Any] | None
    deadline_ms: int | None  # ms since the epoch; None = no ttl
    arrival_ms: int


def parse(tag: str, payload: bytes, arrival_ms: int) -> Command:
    """Payload → Command; raises Refused("malformed", …) with the reason in words, and nothing else."""
    try:
        return _parse(tag, payload, arrival_ms)
    except Refused:
        raise
    except RecursionError:
        raise Refused("malformed", "payload nests too deeply") from None
    except Exception as e:  # noqa: BLE001 - whatever a hostile payload provokes is a malformed command
        raise Refused("malformed", f"payload not understood: {type(e).__name__}: {e}"[:300]) from None


def nesting(payload: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count).
    One linear pass; payloads with few brackets skip it."""
    opening = payload.count(b"[") + payload.count(b"{")
    if opening <= 1:
        return opening
    depth = deepest = 0
    in_str = escaped = False
    for b in payload:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _parse(tag: str, payload: bytes, arrival_ms: int) -> Command:
    if nesting(payload) > MAX_DEPTH:
        raise Refused("malformed", f"payload nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused("malformed", f"payload is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise Refused("malformed", "payload must be a JSON object")
    seq = body.get("seq")
    if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        raise Refused("malformed", '"seq" must be a non-negative 64-bit integer')
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
    return int(m.group(1)) if m and 0 <= int(m.group(1)) <= SEQ_MAX else None


def fingerprint(cmd: Command) -> str:
    """What makes a replay the same command: its tag and its value."""
    v: object = {B64: base64.b64encode(cmd.value).decode()} if isinstance(cmd.value, bytes) else cmd.value
    raw = json.dumps([cmd.tag, v], sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class LogLimit:
    """At most `first` lines per `every` seconds; what was held back is summed up in one line when
    the interval is over (`tick`, called from the MQTT thread's loop, or the next refusal)."""

    def __init__(self, first: int = LOG_FIRST, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic):
        self.first, self.every, self.clock = first, every, clock
        self._start = clock()
        self._logged = 0
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, reason: str) -> bool:
        self.tick()
        with self._lock:
            if self._logged < self.first:
                self._logged += 1
                return True
            self._held[reason] = self._held.get(reason, 0) + 1
            return False

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            if now - self._start < self.every:
                return
            held, self._held = self._held, {}
            self._start, self._logged = now, 0
        if held:
            log.warning(
                "%d more refused commands not logged in the last %.0fs (%s); all are counted in connector_cmd_total",
                sum(held.values()),
                self.every,
                ", ".join(f"{r} {n}" for r, n in sorted(held.items())),
                extra={"suppressed": held},
            )


class Downlink:
    """Validates commands against the running snapshot and routes them to `submit`.

    `handle` runs on the MQTT thread and returns at once; `done(ack)` is called exactly once per
    command, from the MQTT thread (refusals) or from a line thread (write outcome). It never raises."""

    def __init__(
        self,
        connector_id: str,
        writes: Writes | None,
        record: Callable[[list[Frame]], int] | None = None,
        timeout: float = 30.0,
        *,
        max_bytes: int = MAX_BYTES,
        ledger: SeqLedger | None = None,
    ) -> None:
        self.connector_id = connector_id
        self._writes = writes
        self._record = record
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.ledger = ledger if ledger is not None else SeqLedger()
        self.log_limit = LogLimit()
        self.accepting = True
        self._pending: dict[int, tuple[float, Command, Future[None], Callable[[Ack], None]]] = {}
        self._replays: dict[int, list[Callable[[Ack], None]]] = {}  # seq → waiting for the first outcome
        self._lock = threading.Lock()
        self._n = 0

    def close(self) -> None:
        self.ledger.close()

    # -- arrival, on the MQTT thread -------------------------------------------------------------------
    def handle(self, tag: str, payload: bytes, retained: bool, done: Callable[[Ack], None]) -> None:
        try:
            self._handle(tag, payload, retained, done)
        except Exception as e:  # noqa: BLE001 - a bug here must not end the uplink: refuse, count, log
            log.exception("command on %s not handled", tag)
            try:
                ack = Ack(salvage_seq(payload), tag, "fail", "internal", f"internal error: {type(e).__name__}")
                self._finish(done, ack, None, "received")
            except Exception:  # noqa: BLE001 - the refusal itself failed: counted in the log only
                log.exception("command on %s: refusal not delivered", tag)

    def _handle(self, tag: str, payload: bytes, retained: bool, done: Callable[[Ack], None]) -> None:
        arrival = now_ms()
        if len(payload) > self.max_bytes:
            seq = salvage_seq(payload)
            why = f"payload of {len(payload)} bytes is larger than {self.max_bytes}"
            self._finish(done, Ack(seq, tag, "fail", "too_large", why), None, "received")
            return
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
            if self._replayed(cmd, done):
                return
            target = self._validate(cmd)
        except Refused as e:
            self._finish(done, Ack(cmd.seq, tag, "fail", e.reason, str(e)), cmd.value, "received", cmd)
            return
        self._write(cmd, target, done)

    def _replayed(self, cmd: Command, done: Callable[[Ack], None]) -> bool:
        """A seq seen before: answer with its first outcome (or wait for it), never run it again."""
        with self._lock:  # the same lock as the outcome's: a replay either sees it or waits for it
            prev = self.ledger.get(cmd.seq)
            if prev is None:
                return False
            if prev.fp != fingerprint(cmd):
                raise Refused("seq_reused", f"seq {cmd.seq} was already used by another command (on {prev.tag})")
            metrics.CMD.labels(connector=self.connector_id, result=prev.result, reason="duplicate").inc()
            if prev.result == PENDING:
                self._replays.setdefault(cmd.seq, []).append(done)
                return True
        self._record_frame(cmd.tag, cmd.value, cmd, "received", "duplicate", prev.reason, prev.error)
        done(Ack(cmd.seq, cmd.tag, prev.result, prev.reason, prev.error, now_ms()))
        return True

    def _validate(self, cmd: Command) -> WriteTarget:
        """The runtime asks the driver plugin that owns the tag (core/driver.py `resolve_write`)."""
        if self._writes is None:
            raise Refused("unavailable", "no line accepts writes in this process")
        target = self._writes.resolve(cmd.tag, cmd.value)
        self._check_ttl(cmd)
        return target

    @staticmethod
    def _check_ttl(cmd: Command) -> None:
        if cmd.deadline_ms is not None and now_ms() >= cmd.deadline_ms:
            raise Refused("expired", f"command expired {now_ms() - cmd.deadline_ms} ms ago")

    def _write(self, cmd: Command, target: WriteTarget, done: Callable[[Ack], None]) -> None:
        self._record_frame(cmd.tag, cmd.value, cmd, "received", "accepted", None, None)
        # Remembered before the line sees it: a replay from now on waits for this outcome.
        self.ledger.put(cmd.seq, Entry(fingerprint(cmd), cmd.tag, PENDING, "none"))
        try:
            if self._writes is None:
                raise Refused("unavailable", "no line accepts writes in this process")
            self._check_ttl(cmd)
            fut = self._writes.submit(target, cmd.value)
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
        cloud without an ack). The write may still happen later; the ack says it timed out.
        Also the MQTT thread's tick for the refusal log's summary line."""
        self.log_limit.tick()
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
        if ack.result == "ok" or self.log_limit.allow(ack.reason):
            log.log(
                logging.INFO if ack.result == "ok" else logging.WARNING,
                "command %s on %s: %s",
                ack.seq,
                ack.tag,
                ack.result if ack.error is None else f"{ack.result}: {ack.error}"[:500],
                extra={"cmd_seq": ack.seq, "tag": ack.tag, "result": ack.result, "reason": ack.reason},
            )
        self._record_frame(ack.tag, value, cmd, stage, ack.result, ack.reason, ack.error, ack.seq)
        waiting: list[Callable[[Ack], None]] = []
        if cmd is not None and ack.reason != "seq_reused":
            if ack.reason in TRANSIENT and stage == "done":
                self.ledger.forget(cmd.seq)
            with self._lock:
                if ack.reason not in TRANSIENT:
                    self.ledger.put(cmd.seq, Entry(fingerprint(cmd), cmd.tag, ack.result, ack.reason, ack.error))
                waiting = self._replays.pop(cmd.seq, [])
        done(ack)
        for d in waiting:
            d(ack)

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
            meta["error"] = error[:500]
        if cmd is not None and cmd.meta and stage == "received":  # once per command, not in the outcome too
            meta["cmd_meta"] = cmd.meta
        if cmd is not None and cmd.deadline_ms is not None:
            meta["deadline"] = cmd.deadline_ms
        if not isinstance(value, bool | int | float | str | bytes):
            value = None
        q = GOOD if result in ("ok", "accepted") else bad(reason or "refused")
        self._record([Frame(0, now_ms(), tag, value, q, Kind.CMD, meta)])
