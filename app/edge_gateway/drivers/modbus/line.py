"""One thread per physical line: it owns the port and polls every unit on it, one
transaction at a time, and runs cloud writes between polls.

Scheduling: each unit has a polling period and a next-due time; the most overdue unit goes
first, and units start with staggered phases so they do not all fall due together. A unit
that fails `retry + 1` attempts in a row enters Fault: it is then probed with a single attempt
per backoff period (doubling up to FAULT_BACKOFF_MAX), so a dead unit costs one timeout per
backoff period instead of `retry + 1` timeouts every cycle — the healthy units keep their
cadence. A Pause from the bus skips cycles (counted); nothing blocks on the bus.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from prometheus_client import Counter

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.expr import ExprError
from edge_gateway.core.frame import GOOD, FrameBlock, Value, bad, now_ms
from edge_gateway.drivers.modbus import codec, metrics, pdu, writes
from edge_gateway.drivers.modbus.model import Driver, Endpoint, Variable
from edge_gateway.drivers.modbus.pdu import DeviceException, Disconnected, Mismatch, ModbusError
from edge_gateway.drivers.modbus.planner import Planner, Read
from edge_gateway.drivers.modbus.transport import make_transport

log = logging.getLogger(__name__)

FAULT_BACKOFF_MAX = 60.0
RECONNECT_BACKOFF_MAX = 30.0
UTIL_WINDOW = 10.0


class WriteError(Exception):
    """A refused or failed cloud write; the message is the reason sent back in the ack."""


class Meters:
    """A unit's labelled metric children, looked up once: `labels()` takes a lock and builds a key on
    every call, and a line makes a few hundred transactions a second (issue 19)."""

    def __init__(self, driver_id: str) -> None:
        self.driver_id = driver_id
        self.points = metrics.POINTS.labels(driver_id=driver_id)
        self.duration = metrics.DURATION.labels(driver_id=driver_id)
        self._pdu: dict[tuple[str, str], Counter] = {}

    def pdu(self, func: str, result: str) -> Counter:
        child = self._pdu.get((func, result))
        if child is None:
            child = self._pdu[(func, result)] = metrics.PDU.labels(driver_id=self.driver_id, func=func, result=result)
        return child


@dataclass
class Unit:
    driver: Driver
    variables: tuple[Variable, ...]
    planner: Planner
    reads: list[Read]
    next_due: float
    state: str = "ok"  # ok | fault
    failures: int = 0  # consecutive failed cycles
    backoff: float = 0.0
    polls: int = 0
    skipped: int = 0
    last_error: str = ""
    last_ok_ms: int = 0
    since_ms: int = field(default_factory=now_ms)  # when this unit was (re)started: hot reload shows here
    meters: Meters = field(init=False)

    def __post_init__(self) -> None:
        self.meters = Meters(self.driver.id)

    @property
    def id(self) -> str:
        return self.driver.id


@dataclass
class _Write:
    variable: Variable
    value: Value
    future: Future[None] = field(default_factory=Future)


class ModbusLine(threading.Thread):
    def __init__(
        self, endpoint: Endpoint, drivers: Sequence[Driver], variables: Sequence[Variable], bus: FrameBus
    ) -> None:
        super().__init__(name=f"line:{endpoint.id}", daemon=True)
        self.endpoint = endpoint
        self.bus = bus
        self.transport = make_transport(endpoint)
        self.heartbeat = time.monotonic()
        self._stop_evt = threading.Event()
        self._writes: queue.SimpleQueue[_Write] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.units: dict[str, Unit] = {}
        self._min_gap = 1.0 / endpoint.rate if endpoint.rate else 0.0
        self._last_start = 0.0
        self._reconnect_backoff = 0.0
        self._next_connect = 0.0
        self._connected = False
        self._busy = 0.0
        self._window_start = time.monotonic()
        now = time.monotonic()
        for i, d in enumerate(drivers):
            vs = tuple(v for v in variables if v.driver_id == d.id)
            self.units[d.id] = self._unit(d, vs, now + d.modbus.polling * i / max(1, len(drivers)))
        self._bytes = (
            metrics.LINE_BYTES.labels(endpoint_id=endpoint.id, direction="out"),
            metrics.LINE_BYTES.labels(endpoint_id=endpoint.id, direction="in"),
        )

    def _unit(self, d: Driver, vs: tuple[Variable, ...], due: float) -> Unit:
        planner = Planner(self.endpoint, d.modbus.max_regs_per_req)
        metrics.FAULT.labels(driver_id=d.id).set(0)
        return Unit(d, vs, planner, self._plan(d, vs, planner), due)

    def _plan(self, d: Driver, vs: tuple[Variable, ...], planner: Planner) -> list[Read]:
        reads = planner.plan(vs)
        log.debug("plan %s/%s: %s", self.endpoint.id, d.id, [r.describe() for r in reads])
        return reads

    # -- the API other threads use ---------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        """Finish the current transaction, close the port, join; writes still queued are refused."""
        self._stop_evt.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        while True:
            try:
                w = self._writes.get_nowait()
            except queue.Empty:
                return
            if w.future.set_running_or_notify_cancel():
                w.future.set_exception(WriteError(f"line {self.endpoint.id} stopped before the write ran"))

    def submit_write(self, variable: Variable, value: Value) -> Future[None]:
        """Queue a write for this line's thread; it runs before the next poll."""
        w = _Write(variable, value)
        unit = self.units.get(variable.driver_id)
        reason = None
        if unit is None:
            reason = f"driver {variable.driver_id} is not on line {self.endpoint.id}"
        else:
            reason = writes.line_refusal(variable, unit.driver)
        if reason is None:
            try:
                codec.encode(variable, value)
            except (codec.EncodeError, ExprError) as e:
                reason = str(e)
        if reason is not None:
            w.future.set_exception(WriteError(reason))
            return w.future
        self._writes.put(w)
        self._wake.set()
        return w.future

    def update_variables(self, driver_id: str, variables: Sequence[Variable]) -> None:
        """Swap a unit's tag map and re-plan, keeping the port open, the unit's cadence, its learned
        splits and its health (it is the same device)."""
        with self._lock:  # in place: the poll thread's accounting of a cycle in flight lands on this unit
            u = self.units[driver_id]
            u.variables = tuple(variables)
            u.reads = self._plan(u.driver, u.variables, u.planner)

    def restart_driver(self, driver: Driver, variables: Sequence[Variable]) -> None:
        """Replace one unit's settings (a changed driver) without touching the others."""
        with self._lock:
            old = self.units.get(driver.id)
            due = old.next_due if old else time.monotonic()
            self.units[driver.id] = self._unit(driver, tuple(variables), due)

    def device(self, driver_id: str) -> Driver | None:
        """The settings a unit runs with now (None: not on this line)."""
        with self._lock:
            u = self.units.get(driver_id)
            return u.driver if u is not None else None

    def remove_driver(self, driver_id: str) -> None:
        with self._lock:
            self.units.pop(driver_id, None)

    def plan(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {"driver_id": u.id, "unit": u.driver.modbus.unit_id, **r.describe()}
                for u in self.units.values()
                for r in u.reads
            ]

    def status(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {
                u.id: {
                    "state": u.state,
                    "failures": u.failures,
                    "last_error": u.last_error,
                    "polls": u.polls,
                    "skipped": u.skipped,
                    "requests": len(u.reads),
                    "last_ok_ms": u.last_ok_ms,
                    "since_ms": u.since_ms,
                }
                for u in self.units.values()
            }

    # -- the thread -------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                self.heartbeat = time.monotonic()
                self._run_writes()
                unit = self._next_unit()
                if unit is None:
                    continue
                self._poll(unit)
                self.heartbeat = time.monotonic()
        finally:
            self.transport.close()

    def _next_unit(self) -> Unit | None:
        with self._lock:
            units = list(self.units.values())
        if not units:
            self._wake.wait(0.5)
            self._wake.clear()
            return None
        unit = min(units, key=lambda u: u.next_due)
        wait = unit.next_due - time.monotonic()
        if wait > 0:
            self._wake.wait(min(wait, 0.5))
            self._wake.clear()
            return None
        return unit

    def _schedule(self, unit: Unit, period: float) -> None:
        now = time.monotonic()
        with self._lock:
            unit.next_due += period
            if unit.next_due < now:  # overran: skip the missed slots instead of bursting to catch up
                unit.next_due = now + period - (now - unit.next_due) % period

    def _poll(self, unit: Unit) -> None:
        if self.bus.paused:
            with self._lock:
                unit.skipped += 1
            metrics.SKIPPED.labels(driver_id=unit.id).inc()
            self._schedule(unit, unit.driver.modbus.polling)
            return
        attempts = 1 if unit.state == "fault" else unit.driver.modbus.retry + 1
        blocks: list[FrameBlock] = []  # one per read: the bus and the WAL writer work per read, not per tag
        failed = 0
        good = 0  # frames with a value: the decoder's, less those its conversions refused
        error = ""
        i = 0
        # Every Unit field is read and written under the line's lock: a reload (update_variables,
        # restart_driver) and status() run on other threads. The cycle works on its own copy of the plan.
        with self._lock:
            reads = unit.reads
        while i < len(reads) and not self._stop_evt.is_set():
            read = reads[i]
            try:
                values = self._transact(unit, read.request, attempts)
            except DeviceException as e:
                with self._lock:  # the planner is shared with update_variables
                    split = e.code == 2 and unit.planner.forbid(read)
                if split:
                    log.warning(
                        "%s: unit %d refused merged read %s (exception 2): splitting it",
                        unit.id,
                        unit.driver.modbus.unit_id,
                        read.describe(),
                    )
                    with self._lock:
                        unit.reads = reads = unit.planner.plan(unit.variables)
                    continue  # i now indexes the first of the split reads
                blocks.append(self._bad(read, e.reason))
                error = str(e)
                i += 1
                continue  # a device that answers is alive, even if it refuses this read
            except ModbusError as e:
                blocks.append(self._bad(read, e.reason))
                failed += 1
                error = str(e)
                i += 1
                continue
            assert values is not None
            block = read.decoder.block(values, now_ms())
            blocks.append(block)
            good += len(block) if isinstance(block.q, str) else block.q.count(GOOD)
            i += 1
        with self._lock:
            unit.polls += 1
        if blocks:
            self.bus.publish_blocks(blocks)
            unit.meters.points.inc(good)
        self._account(unit, failed == len(reads) and failed > 0, error)

    def _account(self, unit: Unit, cycle_failed: bool, error: str) -> None:
        period = unit.driver.modbus.polling
        with self._lock:
            if cycle_failed:
                unit.failures += 1
                unit.last_error = error
                if unit.state == "ok":
                    unit.state = "fault"
                    unit.backoff = max(period, 1.0)
                    log.error("%s: unit %d in Fault: %s", unit.id, unit.driver.modbus.unit_id, error)
                    metrics.FAULT.labels(driver_id=unit.id).set(1)
                else:
                    unit.backoff = min(FAULT_BACKOFF_MAX, unit.backoff * 2)
                unit.next_due = time.monotonic() + unit.backoff
                return
            if unit.state == "fault":
                log.info("%s: unit %d answers again", unit.id, unit.driver.modbus.unit_id)
                metrics.FAULT.labels(driver_id=unit.id).set(0)
            unit.state, unit.failures, unit.backoff = "ok", 0, 0.0
            unit.last_ok_ms = now_ms()
        self._schedule(unit, period)

    @staticmethod
    def _bad(read: Read, reason: str) -> FrameBlock:
        return FrameBlock(0, now_ms(), read.decoder.tags, [None] * len(read.variables), bad(reason))

    def _transact(self, unit: Unit, request: bytes, attempts: int) -> bytes | list[bool] | None:
        func = pdu.FC_NAME.get(request[0], str(request[0]))
        last: ModbusError = ModbusError("not attempted")
        for _ in range(attempts):
            if self._stop_evt.is_set():
                break
            now = time.monotonic()
            if not self._connected and now < self._next_connect:
                raise Disconnected(f"{self.endpoint.id} is down; reconnecting in {self._next_connect - now:.1f}s")
            if self._min_gap:
                wait = self._last_start + self._min_gap - now
                if wait > 0:
                    time.sleep(wait)
            t0 = self._last_start = time.monotonic()
            out0, in0 = self.transport.bytes_out, self.transport.bytes_in
            try:
                if not self._connected:
                    self.transport.open()
                    if self._reconnect_backoff:
                        metrics.RECONNECT.labels(endpoint_id=self.endpoint.id).inc()
                        log.info("%s: reconnected", self.endpoint.id)
                    self._connected, self._reconnect_backoff = True, 0.0
                response = self.transport.transact(unit.driver.modbus.unit_id, request)
                values = pdu.parse_raw(request, response)
            except Disconnected as e:
                self._disconnected(e)
                unit.meters.pdu(func, "disconnected").inc()
                raise
            except DeviceException as e:
                unit.meters.pdu(func, e.reason).inc()
                metrics.EXCEPTION.labels(driver_id=unit.id, code=str(e.code)).inc()
                raise  # an answer, not a failure to retry
            except Mismatch as e:
                log.debug("%s: %s", unit.id, e)
                unit.meters.pdu(func, "mismatch").inc()
                metrics.MISMATCH.labels(driver_id=unit.id, field=e.field).inc()
                last = e
                continue  # another device's answer, or a stray one: the next attempt may get ours
            except ModbusError as e:
                unit.meters.pdu(func, e.reason).inc()
                last = e
                continue
            finally:
                self._wire(time.monotonic() - t0, out0, in0)
            unit.meters.pdu(func, "ok").inc()
            unit.meters.duration.observe(time.monotonic() - t0)
            return values
        raise last

    def _disconnected(self, e: Exception) -> None:
        if self._connected or not self._reconnect_backoff:
            log.warning("%s: disconnected: %s", self.endpoint.id, e)
        self.transport.close()
        self._connected = False
        self._reconnect_backoff = min(RECONNECT_BACKOFF_MAX, max(0.5, self._reconnect_backoff * 2))
        self._next_connect = time.monotonic() + self._reconnect_backoff

    def _wire(self, busy: float, out0: int, in0: int) -> None:
        self._bytes[0].inc(self.transport.bytes_out - out0)
        self._bytes[1].inc(self.transport.bytes_in - in0)
        self._busy += busy
        now = time.monotonic()
        if now - self._window_start >= UTIL_WINDOW:
            metrics.UTILISATION.labels(endpoint_id=self.endpoint.id).set(self._busy / (now - self._window_start))
            self._busy, self._window_start = 0.0, now

    def _run_writes(self) -> None:
        while not self._stop_evt.is_set():
            try:
                w = self._writes.get_nowait()
            except queue.Empty:
                return
            if not w.future.set_running_or_notify_cancel():
                continue
            var = w.variable
            unit = self.units.get(var.driver_id)
            try:
                if unit is None:
                    raise WriteError(f"driver {var.driver_id} is no longer on this line")
                regs = codec.encode(var, w.value)
                if isinstance(regs, bool):
                    request = pdu.write_coil(var.address.addr, regs)
                elif len(regs) == 1:
                    request = pdu.write_register(var.address.addr, regs[0])
                else:
                    request = pdu.write_registers(var.address.addr, regs)
                self._transact(unit, request, unit.driver.modbus.retry + 1)
            except ModbusError as e:
                w.future.set_exception(WriteError(f"write failed: {e}"))
            except (WriteError, codec.EncodeError, ExprError) as e:
                w.future.set_exception(WriteError(str(e)))
            else:
                w.future.set_result(None)


def start_line(
    endpoint: Endpoint, drivers: Sequence[Driver], variables: Sequence[Variable], bus: FrameBus
) -> ModbusLine:
    """A started line thread for one endpoint and its devices (tests and benchmarks; the runtime goes
    through the plugin)."""
    line = ModbusLine(endpoint, drivers, variables, bus)
    line.start()
    return line
