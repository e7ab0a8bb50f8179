"""One S7 endpoint: the snap7 client, the read plan per device, writes, reconnect with backoff.

The thread owns the client; other threads only queue writes (`submit`) and read `status()`. Each
device is polled at its own `polling`; a cycle runs the device's planned requests (planner.py). A
connection error marks every tag `bad:disconnected` once, then the line reconnects with backoff
(0.5 s · 2ⁿ up to 30 s, equal jitter); an item error (an address the PLC does not have) marks the
tags of that request `bad:<reason>` and the next cycle tries again."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from snap7.client import Client
from snap7.error import S7ConnectionError, S7Error, S7TimeoutError
from snap7.type import Area

from edge_gateway.core.driver import DeviceItem, EndpointItem, TagItem
from edge_gateway.core.frame import GOOD, Frame, Value, bad, now_ms
from edge_gateway.drivers.s7 import codec, planner

log = logging.getLogger(__name__)

AREA = {"DB": Area.DB, "M": Area.MK, "I": Area.PE, "Q": Area.PA}
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0


class Disconnected(Exception):
    pass


@dataclass
class DeviceState:
    device: DeviceItem
    tags: list[TagItem]
    plan: list[list[planner.Range]] = field(default_factory=list)
    due: float = 0.0
    cycles: int = 0
    requests: int = 0  # requests of the last cycle
    errors: int = 0
    last_error: str | None = None
    last_ok_ms: int = 0  # the end of its last cycle with at least one good value


class S7Line(threading.Thread):
    def __init__(self, endpoint: EndpointItem, devices: list[DeviceItem], tags: list[TagItem], bus: Any) -> None:
        super().__init__(name=f"line:{endpoint.id}", daemon=True)
        self.endpoint = endpoint
        self.opts = endpoint.opts
        self.port = endpoint.port or 102
        self.bus = bus
        self.heartbeat = time.monotonic()
        self.devices = [DeviceState(d, [t for t in tags if t.driver_id == d.id]) for d in devices]
        self.tags = {t.tag: t for t in tags}
        self.client: Client | None = None
        self.pdu = 0
        self.state = "connecting"
        self.last_error: str | None = None
        self.connects = 0
        self.writes: queue.Queue[tuple[TagItem, Value, Future[None]]] = queue.Queue()
        self._stop_evt = threading.Event()
        self._marked_down = False
        self._lock = threading.Lock()  # guards the status fields read by other threads
        self.since_ms = now_ms()  # when this worker (and so every device on it) was (re)started

    # -- other threads -------------------------------------------------------------------------------
    def submit(self, tag: TagItem, value: Value) -> Future[None]:
        fut: Future[None] = Future()
        self.writes.put((tag, value, fut))
        return fut

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(10)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                d.device.id: {
                    "state": self.state,
                    "pdu": self.pdu,
                    "cycles": d.cycles,
                    "polls": d.cycles,  # the name edge-ctl status shows for every line
                    "requests_per_cycle": d.requests,
                    "requests": d.requests,
                    "since_ms": self.since_ms,
                    "last_ok_ms": d.last_ok_ms,
                    "errors": d.errors,
                    "last_error": d.last_error or self.last_error,
                    "connects": self.connects,
                }
                for d in self.devices
            }

    # -- the thread ----------------------------------------------------------------------------------
    def run(self) -> None:
        attempt = 0
        while not self._stop_evt.is_set():
            self.heartbeat = time.monotonic()
            try:
                self._connect()
                attempt = 0
                self._serve()
            except (Disconnected, S7ConnectionError, S7TimeoutError, OSError) as e:
                self._down(str(e) or type(e).__name__)
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
                attempt = min(attempt + 1, 16)
                self._wait(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not crypto
        self._close()

    def _wait(self, seconds: float) -> None:
        """Sleep, still answering writes (refused while down) and stamping the heartbeat."""
        end = time.monotonic() + seconds
        while not self._stop_evt.is_set():
            self.heartbeat = time.monotonic()
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                tag, _value, fut = self.writes.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            fut.set_exception(ConnectionError(f"{tag.tag}: PLC {self.endpoint.host}:{self.port} is disconnected"))

    def _connect(self) -> None:
        self._close()
        c = Client()
        if self.opts.tsap is not None:
            c.remote_tsap = self.opts.tsap
            c._connect(self.endpoint.host, 0, 0, self.port)  # noqa: SLF001 - snap7's connect with explicit TSAPs
        else:
            c.connect(self.endpoint.host, self.opts.rack, self.opts.slot, self.port)
        conn = getattr(c, "connection", None)
        sock = getattr(conn, "socket", None)
        if conn is not None:
            conn.timeout = self.opts.timeout
        if sock is not None:
            sock.settimeout(self.opts.timeout)
        self.client = c
        pdu = c.get_pdu_length()
        now = time.monotonic()
        with self._lock:
            self.pdu = pdu
            self.state = "up"
            self.last_error = None
            self.connects += 1
            for d in self.devices:
                size = min(pdu, d.device.cfg.max_pdu) if pdu else d.device.cfg.max_pdu
                d.plan = planner.plan([t for t in d.tags if "R" in t.access], size)
                d.due = now
        self._marked_down = False
        log.info("%s: connected to %s:%s, PDU %d", self.endpoint.id, self.endpoint.host, self.port, pdu)

    def _close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken link
                log.debug("%s: disconnect failed", self.endpoint.id, exc_info=True)
            self.client = None

    def _down(self, reason: str) -> None:
        self._close()
        with self._lock:
            self.state = "down"
            self.last_error = reason
        if not self._marked_down:
            self._marked_down = True
            log.warning("%s: disconnected: %s", self.endpoint.id, reason)
            ts = now_ms()
            q = bad("disconnected")
            frames = [Frame(0, ts, t.tag, None, q) for d in self.devices for t in d.tags if "R" in t.access]
            if frames:
                self.bus.publish(frames)

    def _serve(self) -> None:
        while not self._stop_evt.is_set():
            self.heartbeat = time.monotonic()
            now = time.monotonic()
            for d in self.devices:
                if now >= d.due:
                    self._poll(d)
                    d.due = max(d.due + d.device.cfg.polling, time.monotonic())
            nxt = min((d.due for d in self.devices), default=now + 1.0)
            try:
                tag, value, fut = self.writes.get(timeout=max(0.0, min(nxt - time.monotonic(), 1.0)))
            except queue.Empty:
                continue
            self._write(tag, value, fut)

    def _poll(self, d: DeviceState) -> None:
        assert self.client is not None
        frames: list[Frame] = []
        for req in d.plan:
            try:
                data = self._read(req)
            except (S7ConnectionError, S7TimeoutError, OSError):
                raise
            except S7Error as e:  # the whole PDU refused
                data = [_reason(e)] * len(req)
            ts = now_ms()
            for r, buf in zip(req, data, strict=True):
                if isinstance(buf, str):
                    with self._lock:
                        d.errors += 1
                        d.last_error = f"{r.area}{r.db or ''}@{r.start}+{r.size}: {buf}"
                    frames += [Frame(0, ts, t.tag, None, bad(buf)) for t in r.tags]
                    continue
                for t in r.tags:
                    a: codec.S7Address = t.address
                    raw = buf[a.start - r.start : a.end - r.start]
                    try:
                        v = codec.decode(t.datatype, a, raw)
                        if t.scale is not None and isinstance(v, int | float) and not isinstance(v, bool):
                            v = t.scale(v)
                    except Exception as e:  # noqa: BLE001 - a short answer or a failed scale marks the tag
                        frames.append(
                            Frame(0, ts, t.tag, None, bad("scale" if isinstance(e, ArithmeticError) else "decode"))
                        )
                        log.debug("%s: decode failed: %s", t.tag, e)
                        continue
                    frames.append(Frame(0, ts, t.tag, v, GOOD))
        with self._lock:
            d.cycles += 1
            d.requests = len(d.plan)
            if any(f.q == GOOD for f in frames):
                d.last_ok_ms = now_ms()
        if frames:
            self.bus.publish(frames)

    def _read(self, req: list[planner.Range]) -> list[bytearray | str]:
        """Each range's bytes, or the reason its item failed (the other items of the PDU still count)."""
        assert self.client is not None
        c = self.client
        if len(req) == 1:
            r = req[0]
            try:
                return [c.read_area(AREA[r.area], r.db, r.start, r.size)]
            except (S7ConnectionError, S7TimeoutError):
                raise
            except S7Error as e:
                return [_reason(e)]
        specs = [(int(AREA[r.area]), r.db, r.start, r.size) for r in req]
        response = c._send_receive(c.protocol.build_multi_read_request(specs))  # noqa: SLF001 - one planned PDU
        return _items(response.get("raw_data", b""), len(specs))

    def _write(self, tag: TagItem, value: Value, fut: Future[None]) -> None:
        assert self.client is not None
        a: codec.S7Address = tag.address
        try:
            data = codec.encode(tag.datatype, a, value)
            if tag.datatype == "bool":
                # Read-modify-write of the bit's byte: snap7's server (and some CPs) ignore the BIT
                # transport size and would overwrite the whole byte.
                byte = self.client.read_area(AREA[a.area], a.db, a.start, 1)[0]
                mask = 1 << (a.bit or 0)
                byte = (byte | mask) if data[0] else (byte & ~mask & 0xFF)
                self.client.write_area(AREA[a.area], a.db, a.start, bytearray([byte]))
            else:
                self.client.write_area(AREA[a.area], a.db, a.start, bytearray(data))
        except (S7ConnectionError, S7TimeoutError, OSError) as e:
            fut.set_exception(ConnectionError(f"{tag.tag}: {e}"))
            raise
        except Exception as e:  # noqa: BLE001 - the ack carries it
            fut.set_exception(e)
            return
        log.info("%s: wrote %r to %s", tag.tag, value, a.describe())
        fut.set_result(None)


def _reason(e: Exception) -> str:
    text = str(e).lower()
    for key, reason in (("out of range", "address"), ("not available", "address"), ("not exist", "address"),
                        ("access", "access_denied"), ("type", "type")):  # fmt: skip
        if key in text:
            return reason
    return "read_error"


# S7 item return codes (data section of a read response)
ITEM_ERRORS = {0x01: "hardware", 0x03: "access_denied", 0x05: "address", 0x06: "type", 0x07: "type", 0x0A: "address"}


def _items(raw: bytes, n: int) -> list[bytearray | str]:
    """A multi-variable read response's items: bytes, or the reason for a failed item."""
    out: list[bytearray | str] = []
    off = 0
    for i in range(n):
        if off + 4 > len(raw):
            out += ["read_error"] * (n - i)
            break
        code, transport = raw[off], raw[off + 1]
        length = int.from_bytes(raw[off + 2 : off + 4], "big")
        off += 4
        if code != 0xFF:
            out.append(ITEM_ERRORS.get(code, "read_error"))
            continue  # a failed item carries no data and no fill byte
        size = (length + 7) // 8 if transport in (0x03, 0x04, 0x05) else length  # bit lengths
        out.append(bytearray(raw[off : off + size]))
        off += size
        if i < n - 1 and size % 2:
            off += 1
    return out
