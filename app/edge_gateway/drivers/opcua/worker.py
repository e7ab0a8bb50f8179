"""One OPC UA endpoint: a thread that owns an asyncio event loop, and in it one asyncua session.

Nothing outside this module sees asyncio: the thread runs `loop.run_until_complete`, writes come in
through `write()` (a concurrent.futures.Future, from `run_coroutine_threadsafe`), `stop()` wakes the
loop with `call_soon_threadsafe`. Tags listed in their device's `subscriptions` are monitored items
(data-change notifications); every other tag is read with the Read service, `max_nodes_per_read` at a
time, every `polling` ms. A lost session marks every tag `bad:disconnected` once, then the worker
reconnects with backoff and re-creates the subscriptions."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from edge_gateway.core.datatypes import FLOAT32_MAX, INT_RANGES
from edge_gateway.core.driver import DeviceItem, EndpointItem, Refused, TagItem
from edge_gateway.core.frame import GOOD, Frame, Value, bad, now_ms
from edge_gateway.drivers.opcua.config import ALIASES, NodeRef, OpcuaDevice, OpcuaEndpoint

log = logging.getLogger(__name__)

BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0
KEEPALIVE_S = 1.0  # how often a subscription-only session is checked between notifications
ACCESS_CURRENT_WRITE = 0x02

# our datatype → the Python values a command may carry (bool is not an int here)
_INTS = frozenset(INT_RANGES)


def quality(code: ua.StatusCode) -> str:
    """`good`, `uncertain:<name>` or `bad:<name>` from an OPC UA StatusCode (severity = top two bits)."""
    value = code.value if isinstance(code, ua.StatusCode) else int(code)
    severity = (value >> 30) & 0x3
    if severity == 0:
        return GOOD
    name = ua.StatusCode(value).name
    return f"uncertain:{name}" if severity == 1 else bad(name)


def _ms(t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def convert(value: Any) -> Value:
    """A Variant's value as a frame value: datetimes in ms since the epoch, the rest as str."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, datetime):
        return _ms(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    return str(value)


@dataclass
class TagState:
    item: TagItem
    device: str
    ref: NodeRef
    node_id: ua.NodeId | None = None  # resolved at connect (nsu=)
    variant: ua.VariantType | None = None  # the node's own type, learnt from its DataType / first value
    writable: bool | None = None  # from UserAccessLevel, read at connect for RW tags
    subscribed: bool = False


@dataclass
class Stats:
    attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    reads: int = 0
    notifications: int = 0
    writes: int = 0
    last_error: str = ""
    state: str = "connecting"
    extra: dict[str, Any] = field(default_factory=dict)


class OpcuaWorker(threading.Thread):
    def __init__(self, endpoint: EndpointItem, devices: Sequence[DeviceItem], tags: Sequence[TagItem], bus: Any):
        super().__init__(name=f"opcua:{endpoint.id}", daemon=True)
        self.heartbeat = time.monotonic()
        self.endpoint = endpoint
        self.opts: OpcuaEndpoint = endpoint.opts
        self.url = f"opc.tcp://{endpoint.host}:{endpoint.port or 4840}"
        self.devices: dict[str, OpcuaDevice] = {d.id: d.cfg for d in devices}
        subscribed = {d.id: {s.node.text for s in d.cfg.subscriptions} for d in devices}
        self.tags: dict[str, TagState] = {}
        for t in tags:
            ref = t.address.node
            self.tags[t.tag] = TagState(t, t.driver_id, ref, subscribed=ref.text in subscribed[t.driver_id])
        self.bus = bus
        self.stats = Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._client: Client | None = None
        self._disconnected_marked = False
        self.since_ms = now_ms()  # when this worker (and so every device on it) was (re)started
        self._polls = {d: 0 for d in self.devices}  # Read cycles per device (owned by the thread)
        self._requests = {d: 0 for d in self.devices}  # Read requests of the device's last cycle
        self._last_ok = {d: 0 for d in self.devices}  # epoch ms of its last answered cycle

    # -- the thread ---------------------------------------------------------------------------------------
    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        self._stopping.set()
        self._ready.wait(5)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake_up)
            except RuntimeError:
                pass  # the loop closed meanwhile
        self.join(15)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, stamping the heartbeat; returns early on stop()."""
        assert self._wake is not None
        end = time.monotonic() + seconds
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def _main(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            try:
                await self._session()
                attempt = 0
            except Exception as e:  # noqa: BLE001 - any session failure is a disconnect, retried
                self.stats.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if self.stats.state == "up":
                    log.warning("opcua %s: session lost: %s", self.endpoint.id, self.stats.last_error)
                else:
                    log.warning("opcua %s: cannot connect to %s: %s", self.endpoint.id, self.url, self.stats.last_error)
            finally:
                await self._close()
            if self._stopping.is_set():
                break
            self._mark_disconnected()
            self.stats.state = "reconnecting"
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
            attempt = min(attempt + 1, 16)
            await self._sleep(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not crypto
        self.stats.state = "stopped"

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.opts.timeout)
        except Exception:  # noqa: BLE001 - the session is gone either way
            try:
                client.disconnect_socket()
            except Exception:  # noqa: BLE001
                pass

    def _mark_disconnected(self) -> None:
        if self._disconnected_marked or not self.tags:
            return
        self._disconnected_marked = True
        self.stats.disconnects += 1
        ts = now_ms()
        self.bus.publish([Frame(0, ts, t, None, bad("disconnected")) for t in self.tags])

    # -- one session -----------------------------------------------------------------------------------------
    async def _connect(self) -> Client:
        o = self.opts
        client = Client(self.url, timeout=o.timeout)
        client.session_timeout = max((d.session_timeout for d in self.devices.values()), default=60_000)
        if o.security_policy != "None":
            assert o.certificate and o.private_key and o.security_mode
            trust_dir = o.server_certificate if o.server_certificate and Path(o.server_certificate).is_dir() else None
            pinned = None if trust_dir else o.server_certificate
            await client.set_security_string(
                ",".join(x for x in (o.security_policy, o.security_mode, o.certificate, o.private_key, pinned) if x)
            )
            if trust_dir:
                client.certificate_validator = TrustDir(Path(trust_dir))
            elif pinned:
                await self._check_pinned(Path(pinned))
        if o.username is not None and o.password_file is not None:
            client.set_user(o.username)
            client.set_password(Path(o.password_file).read_text().strip())
        self._client = client
        await client.connect()
        return client

    async def _check_pinned(self, path: Path) -> None:
        """A pinned `server_certificate` that is not the server's would only show as a timeout (the server
        cannot decrypt what was encrypted to another key): ask the endpoints first, and say so."""
        from cryptography.hazmat.primitives.serialization import Encoding

        pinned = load_certificate(path.read_bytes()).public_bytes(Encoding.DER)
        probe = Client(self.url, timeout=self.opts.timeout)
        endpoints = await probe.connect_and_get_server_endpoints()
        offered = [bytes(e.ServerCertificate or b"") for e in endpoints]
        if not any(c.startswith(pinned) for c in offered if c):
            raise CertificateMismatch(f"the server's certificate is not server_certificate {path}")

    async def _resolve(self, client: Client) -> None:
        uris: dict[str, int] = {}
        for st in self.tags.values():
            ref = st.ref
            ns = ref.ns
            if ref.nsu is not None:
                if ref.nsu not in uris:
                    uris[ref.nsu] = await client.get_namespace_index(ref.nsu)
                ns = uris[ref.nsu]
            kind = {"i": ua.NodeIdType.Numeric, "s": ua.NodeIdType.String, "g": ua.NodeIdType.Guid,
                    "b": ua.NodeIdType.ByteString}[ref.kind]  # fmt: skip
            ident: Any = ref.ident
            if ref.kind == "g":
                import uuid

                ident = uuid.UUID(str(ref.ident))
            st.node_id = ua.NodeId(ident, ns, kind)
        writable = [st for st in self.tags.values() if st.item.writable]
        if writable:
            res = await self._read([st.node_id for st in writable], ua.AttributeIds.UserAccessLevel)  # type: ignore[misc]
            for st, dv in zip(writable, res, strict=True):
                level = dv.Value.Value if dv.StatusCode.is_good() and dv.Value is not None else 0
                st.writable = bool(int(level or 0) & ACCESS_CURRENT_WRITE)
            res = await self._read([st.node_id for st in writable], ua.AttributeIds.DataType)  # type: ignore[misc]
            for st, dv in zip(writable, res, strict=True):
                if dv.StatusCode.is_good() and isinstance(dv.Value.Value, ua.NodeId):
                    dt = dv.Value.Value
                    if dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int) and 1 <= dt.Identifier <= 25:
                        st.variant = ua.VariantType(dt.Identifier)

    async def _read(self, nodes: list[ua.NodeId], attr: ua.AttributeIds) -> list[ua.DataValue]:
        assert self._client is not None
        params = ua.ReadParameters()
        for n in nodes:
            rv = ua.ReadValueId()
            rv.NodeId = n
            rv.AttributeId = attr
            params.NodesToRead.append(rv)
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        return await self._client.uaclient.read(params)

    async def _session(self) -> None:
        self.stats.state = "connecting"
        self.stats.attempts += 1
        client = await self._connect()
        await self._resolve(client)
        self.stats.connects += 1
        self.stats.state = "up"
        self.stats.last_error = ""
        self._disconnected_marked = False
        log.info("opcua %s: connected to %s", self.endpoint.id, self.url)
        for dev_id, dev in self.devices.items():
            subs = [st for st in self.tags.values() if st.device == dev_id and st.subscribed]
            if subs:
                handler = _Handler(self, {st.node_id: st for st in subs if st.node_id is not None})
                sub = await client.create_subscription(dev.publishing_interval, handler)
                sample = {s.node.text: s.sample for s in dev.subscriptions}
                by_interval: dict[float, list[Any]] = {}
                for st in subs:
                    iv = sample.get(st.ref.text)
                    interval = float(iv if iv is not None else dev.publishing_interval)
                    by_interval.setdefault(interval, []).append(client.get_node(st.node_id))
                for interval, nodes in by_interval.items():  # one CreateMonitoredItems per sampling interval
                    # A queue for every sample of one publishing interval: a value that changes faster than
                    # the server publishes is delivered change by change, not only its last value.
                    queue = max(1, math.ceil(dev.publishing_interval / max(interval, 1.0)) + 1)
                    await sub.subscribe_data_change(nodes, sampling_interval=interval, queuesize=queue)
        polled: dict[str, list[TagState]] = {}
        for st in self.tags.values():
            if not st.subscribed:
                polled.setdefault(st.device, []).append(st)
        due = {d: 0.0 for d in polled}
        while not self._stopping.is_set():
            now = time.monotonic()
            self.heartbeat = now
            for dev_id, sts in polled.items():
                if now >= due[dev_id]:
                    dev = self.devices[dev_id]
                    due[dev_id] = now + dev.polling / 1000
                    self._requests[dev_id] = await self._poll(sts, dev.max_nodes_per_read)
                    self._polls[dev_id] += 1
                    self._last_ok[dev_id] = now_ms()
            if not polled or all(v > time.monotonic() for v in due.values()):
                await client.check_connection()
            nxt = min(due.values(), default=time.monotonic() + KEEPALIVE_S)
            await self._sleep(max(0.0, min(nxt - time.monotonic(), KEEPALIVE_S)))

    async def _poll(self, sts: list[TagState], batch: int) -> int:
        """One Read cycle of a device's polled tags; returns how many requests it took."""
        n = 0
        for i in range(0, len(sts), batch):
            n += 1
            part = sts[i : i + batch]
            res = await self._read([st.node_id for st in part], ua.AttributeIds.Value)  # type: ignore[misc]
            self.stats.reads += 1
            self.publish([(st, dv) for st, dv in zip(part, res, strict=True)])
        return n

    def publish(self, pairs: list[tuple[TagState, ua.DataValue]]) -> None:
        frames = []
        for st, dv in pairs:
            q = quality(dv.StatusCode)
            value: Value = None
            if dv.Value is not None:
                if st.variant is None and dv.Value.VariantType is not None:
                    st.variant = dv.Value.VariantType
                value = convert(dv.Value.Value)
                if st.item.scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
                    value = st.item.scale(value)
            if q.startswith("bad:"):
                value = None
            src, srv = _ms(dv.SourceTimestamp), _ms(dv.ServerTimestamp)
            ts = src or srv or now_ms()
            differ = src is not None and srv is not None and srv != src
            meta: dict[str, object] | None = {"server_ts": srv} if differ else None
            frames.append(Frame(0, ts, st.item.tag, value, q, meta=meta))
        if frames:
            self.bus.publish(frames)

    # -- writes (from any thread) --------------------------------------------------------------------------
    def write(self, tag: TagItem, value: Value) -> Future[None]:
        st = self.tags.get(tag.tag)
        if st is None:
            raise Refused("unknown_tag", f"{tag.tag} is not on this endpoint")
        if not self.devices[st.device].enable_write:
            raise Refused("write_disabled", f"{tag.tag}: device {st.device} has enable_write: false")
        if st.writable is False:
            raise Refused("read_only", f"{tag.tag}: the server's AccessLevel forbids writing {st.ref.text}")
        check_value(tag.datatype, value)
        if self._loop is None or self._client is None or st.node_id is None or st.writable is None:
            raise Refused("unavailable", f"{tag.tag}: no session with {self.url}")
        if tag.scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
            if not tag.scale.invertible:
                raise Refused("invalid_value", f"{tag.tag}: its scale is not invertible")
            raw = tag.scale.inverse(float(value))
            value = round(raw) if ALIASES.get(tag.datatype, tag.datatype) in _INTS else raw
        return asyncio.run_coroutine_threadsafe(self._write(st, value), self._loop)

    async def _write(self, st: TagState, value: Value) -> None:
        client = self._client
        if client is None or st.node_id is None:
            raise ConnectionError("disconnected")
        vt = st.variant
        if st.item.datatype == "datetime" and isinstance(value, int):
            value = datetime.fromtimestamp(value / 1000, tz=UTC)  # type: ignore[assignment]
        params = ua.WriteParameters()
        wv = ua.WriteValue()
        wv.NodeId = st.node_id
        wv.AttributeId = ua.AttributeIds.Value
        wv.Value = ua.DataValue(ua.Variant(value, vt))
        params.NodesToWrite.append(wv)
        codes = await client.uaclient.write(params)
        self.stats.writes += 1
        code = codes[0]
        if not code.is_good():
            raise RuntimeError(code.name)

    def status(self) -> dict[str, Any]:
        """`edge-ctl status`: one entry per device, as every line shows them (the session's fields in
        each, since the devices of an endpoint share it)."""
        session = self.session_status()
        return {
            dev: {
                **session,
                "polls": self._polls[dev],
                "requests": self._requests[dev],
                "since_ms": self.since_ms,
                "last_ok_ms": self._last_ok[dev],
                "tags": sum(1 for t in self.tags.values() if t.device == dev),
                "subscribed": sum(1 for t in self.tags.values() if t.device == dev and t.subscribed),
            }
            for dev in self.devices
        }

    def session_status(self) -> dict[str, Any]:
        """The endpoint's session: state, attempts, counters, last error."""
        s = self.stats
        return {
            "url": self.url,
            "state": s.state,
            "attempts": s.attempts,
            "connects": s.connects,
            "disconnects": s.disconnects,
            "reads": s.reads,
            "notifications": s.notifications,
            "writes": s.writes,
            "last_error": s.last_error,
            "tags": len(self.tags),
            "subscribed": sum(1 for t in self.tags.values() if t.subscribed),
        }


def check_value(datatype: str, value: Value) -> None:
    dt = ALIASES.get(datatype, datatype)
    ok: bool
    if dt == "bool":
        ok = isinstance(value, bool)
    elif dt in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok:
            lo, hi = INT_RANGES[dt]
            if not lo <= value <= hi:  # type: ignore[operator]
                raise Refused("out_of_range", f"{value!r} is outside {dt} ({lo}..{hi})")
    elif dt in ("float32", "float64"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise Refused("invalid_value", "not a finite number")
        if ok and dt == "float32" and abs(float(value)) > FLOAT32_MAX:  # type: ignore[arg-type]
            raise Refused("out_of_range", f"{value!r} is outside float32")
    elif dt == "string":
        ok = isinstance(value, str)
    elif dt == "binary":
        ok = isinstance(value, bytes)
    elif dt == "datetime":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = False
    if not ok:
        raise Refused("invalid_value", f"{type(value).__name__} {value!r} is not a {datatype}")


class CertificateMismatch(Exception):
    pass


def load_certificate(raw: bytes) -> Any:
    """A PEM or DER X.509 certificate (ValueError if it is neither)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw else x509.load_der_x509_certificate(raw)


class TrustDir:
    """asyncua's certificate validator over a trust directory: the server's certificate must be one of
    the DER/PEM certificates there, or be issued by one of them, and be within its validity dates.
    Read at every connect, so a certificate dropped into the directory is trusted on the next attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def certificates(self) -> list[Any]:
        out = []
        for f in sorted(self.path.iterdir()):
            if f.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
                continue
            try:
                out.append(load_certificate(f.read_bytes()))
            except ValueError:
                log.warning("opcua trust directory %s: %s is not a certificate", self.path, f.name)
        return out

    async def __call__(self, cert: Any, app_description: Any) -> None:
        from asyncua.common.utils import ServiceError

        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        for ca in self.certificates():
            if ca == cert:
                return
            try:
                cert.verify_directly_issued_by(ca)
                return
            except Exception:  # noqa: BLE001 - not signed by this one (InvalidSignature, another key type)
                continue
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


class _Handler:
    """asyncua's subscription handler: data-change notifications, on the worker's own loop."""

    def __init__(self, worker: OpcuaWorker, by_node: dict[ua.NodeId, TagState]) -> None:
        self.worker, self.by_node = worker, by_node

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        st = self.by_node.get(node.nodeid)
        if st is None:
            return
        self.worker.stats.notifications += 1
        self.worker._last_ok[st.device] = now_ms()  # noqa: SLF001 - on the worker's own loop
        self.worker.publish([(st, data.monitored_item.Value)])

    def status_change_notification(self, status: Any) -> None:
        self.worker.stats.last_error = f"subscription status {status}"
