"""One gateway's configuration in etcd: snapshot, guarded push, watch, history, rollback, fleet keys.

Layout (README.md here says why): one key per table, `{prefix}/endpoints.yml` … `{prefix}/gateway.yml`,
the value the file's YAML text byte for byte, plus `{prefix}/_meta` (JSON: who, host, when, message,
tool) written in the same txn as the tables it describes. Status and presence live beside, under
`/edge/status/v1/{id}` and `/edge/presence/v1/{id}` (the presence key on a lease).

Everything goes through etcd3gw (etcd's JSON gateway, `/v3/...`): its `Etcd3Client.post`/`get_url`,
`transaction`, and its session for the watch stream, because etcd3gw's own Watcher drops the
`canceled`/`compact_revision` answer of a compacted start revision (a silent miss) and its `get`
drops the response header (the revision a snapshot was read at). Each endpoint has its own client;
a call tries them in order from the last one that answered, so one dead member costs one timeout.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from etcd3gw import exceptions as gw_exc
from etcd3gw.client import Etcd3Client

from edge_gateway import __version__
from edge_gateway.config.etcd.url import Credentials, EtcdUrl
from edge_gateway.config.model import NAMES

TABLES = NAMES  # endpoints, drivers, variables, connector, gateway
META = "_meta"
CONFIG_ROOT = "/edge/config/v1"
STATUS_ROOT = "/edge/status/v1"
PRESENCE_ROOT = "/edge/presence/v1"
# etcd's default --max-request-bytes (1.5 MiB): a txn larger than that is refused by the server.
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
API_PATH = "/v3/"  # etcd >= 3.4; given, so no /version round trip per client


# --- key names: the gateway, `edge-cfg fleet status` and the RBAC recipe agree through these -----------


def config_prefix(gateway_id: str) -> str:
    return f"{CONFIG_ROOT}/{gateway_id}"


def table_key(prefix: str, table: str) -> str:
    return f"{prefix}/{table}.yml"


def meta_key(prefix: str) -> str:
    return f"{prefix}/{META}"


def status_key(gateway_id: str) -> str:
    return f"{STATUS_ROOT}/{gateway_id}"


def presence_key(gateway_id: str) -> str:
    return f"{PRESENCE_ROOT}/{gateway_id}"


def range_end(prefix: str) -> str:
    """The end of etcd's range for every key starting with `prefix` (its last byte plus one)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


# --- errors ----------------------------------------------------------------------------------------------


class EtcdError(Exception):
    """Anything the store refused or could not do; the message is for the operator (no secrets)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, timed out, no leader) after every endpoint was tried."""


class Conflict(EtcdError):
    """The guarded txn failed: a table or _meta changed since the revision the push was diffed against."""

    def __init__(self, message: str, current_revision: int = 0) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class Compacted(EtcdError):
    """The revision asked for is older than etcd's compaction: a watcher must resync from a snapshot."""

    def __init__(self, compact_revision: int, message: str = "") -> None:
        super().__init__(message or f"revision compacted (etcd keeps revisions from {compact_revision} on)")
        self.compact_revision = compact_revision


class PermissionDenied(EtcdError):
    """Authentication failed or the user's roles do not allow this key."""


class TooLarge(EtcdError):
    """The request is larger than the server's --max-request-bytes."""


# --- values ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The tables of one prefix as of one revision (one range request: consistent)."""

    revision: int  # the store's revision the range was read at: watch from revision + 1
    tables: dict[str, str]  # table name → YAML text; an absent table (file) is not a key
    meta: dict[str, Any] | None  # the _meta of the last edge-cfg write, None if none
    mod_revisions: dict[str, int] = field(default_factory=dict)  # table or "_meta" → its mod_revision

    @property
    def config_revision(self) -> int:
        """The revision of the last write to this prefix (0 when empty): what a gateway that applied this
        snapshot reports as applied (`cfg_revision_current`), equal to what `push` printed."""
        return max(self.mod_revisions.values(), default=0)

    def write_to(self, directory: str | Path) -> None:
        """The tables as files in `directory` (absent tables removed), e.g. to lint them."""
        write_tables(self.tables, directory)


@dataclass(frozen=True)
class Change:
    """What one revision changed under the prefix: the tables written (text) or deleted (None)."""

    revision: int
    tables: dict[str, str | None]
    meta: dict[str, Any] | None  # the _meta written in the same txn, None for a raw write


@dataclass(frozen=True)
class HistoryEntry:
    revision: int
    tables: tuple[str, ...]  # the tables this revision wrote
    meta: dict[str, Any] | None  # None: written without edge-cfg (no _meta in that txn)


@dataclass(frozen=True)
class FleetEntry:
    gateway_id: str
    present: bool  # the presence key exists (its lease is alive)
    status: dict[str, Any] | None  # the gateway's last status document
    presence: dict[str, Any] | None


def write_tables(tables: Mapping[str, str], directory: str | Path) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        path = d / f"{name}.yml"
        if name in tables:
            path.write_text(tables[name], encoding="utf-8")
        else:
            path.unlink(missing_ok=True)


def read_tables(directory: str | Path) -> dict[str, str]:
    """The tables of a config directory as the store keeps them (a missing file is an absent table)."""
    d = Path(directory)
    out = {}
    for name in TABLES:
        path = d / f"{name}.yml"
        if path.is_file():
            out[name] = path.read_bytes().decode("utf-8")
    return out


def request_size(changed: Mapping[str, str | None], prefix: str = CONFIG_ROOT + "/gateway-id") -> int:
    """About the bytes of the txn a push of `changed` sends (what etcd holds against --max-request-bytes):
    the values and keys, six compares and a _meta record."""
    keys = len(prefix) + 20
    values = sum(len(t.encode()) for t in changed.values() if t is not None)
    return values + keys * (len(changed) + 7) + 1024


def make_meta(message: str = "", tool: str = "edge-cfg") -> dict[str, Any]:
    """Who wrote a revision, recorded in `_meta`: the OS user, the host, UTC time, the message."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.getuid())
    return {
        "who": who,
        "host": socket.gethostname(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "message": message,
        "tool": f"{tool} {__version__}",
    }


# --- the store -------------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", errors="replace")


def _int(value: Any) -> int:
    return int(value or 0)  # the gateway writes int64 as JSON strings and omits zeros


def _error_body(e: gw_exc.Etcd3Exception) -> tuple[int, str]:
    """(gRPC code, message) from the JSON gateway's error body."""
    try:
        body = json.loads(e.detail_text or "")
        return int(body.get("code", 0)), str(body.get("message") or body.get("error") or "")
    except (ValueError, TypeError, AttributeError):
        return 0, str(e.detail_text or e)[:200]


class Store:
    """A client of one etcd cluster, for one prefix (`url.prefix`; empty for `fleet status`).

    Thread-safe: the endpoint order and the auth token sit behind `_lock`; each call builds its
    own request. `timeout` bounds each request to one endpoint."""

    def __init__(
        self,
        url: EtcdUrl,
        creds: Credentials | None = None,
        timeout: float = 5.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.url = url
        self.max_request_bytes = max_request_bytes
        self.creds = creds or Credentials()
        self.timeout = timeout
        self.prefix = url.prefix
        self._lock = threading.Lock()
        self._clients = [self._client(host, port) for host, port in url.endpoints]
        self._first = 0  # the endpoint that answered last
        self._token: str | None = None

    def _client(self, host: str, port: int) -> Etcd3Client:
        c = self.creds
        client = Etcd3Client(
            host=host,
            port=port,
            protocol="https" if c.tls else "http",
            ca_cert=c.ca,
            cert_cert=c.cert,
            cert_key=c.key,
            timeout=self.timeout,
            api_path=API_PATH,
        )
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's CA (requests#3829) and
        # routes through HTTP(S)_PROXY: the store talks to exactly the endpoints and CA it was given.
        client.session.trust_env = False
        return client

    def close(self) -> None:
        for c in self._clients:
            c.session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport: every request goes through here --

    def _order(self) -> list[int]:
        with self._lock:
            first = self._first
        n = len(self._clients)
        return [(first + i) % n for i in range(n)]

    def _authenticate(self, client: Etcd3Client) -> None:
        """etcd's simple tokens live in the members' memory: a restarted member forgets them, so a
        refused token is renewed once per call."""
        name = self.creds.user
        assert name is not None
        try:
            answer = client.post(
                client.get_url("/auth/authenticate"), json={"name": name, "password": self.creds.password()}
            )
        except gw_exc.Etcd3Exception as e:
            code, message = _error_body(e)
            if code in (3, 16) or "authentication failed" in message:
                raise PermissionDenied(f"etcd user {name}: {message or 'authentication failed'}") from None
            raise
        token = str(answer.get("token", ""))
        with self._lock:
            self._token = token
            for c in self._clients:
                c.session.headers["Authorization"] = token

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST `payload` to `/v3/{path}` on the first endpoint that answers; etcd's refusals as errors."""
        last = ""
        for i in self._order():
            client = self._clients[i]
            host = f"{client.host}:{client.port}"
            for attempt in range(2):
                try:
                    if self.creds.user and self._token is None:
                        self._authenticate(client)
                    if path == "kv/txn":
                        answer = dict(client.transaction(payload))
                    else:
                        answer = client.post(client.get_url(path), json=payload)
                except (gw_exc.ConnectionFailedError, gw_exc.ConnectionTimeoutError) as e:
                    last = f"{host}: {_short(e)}"
                    break
                except requests.exceptions.RequestException as e:  # TLS handshake, a reset mid-answer
                    last = f"{host}: {_short(e)}"
                    break
                except gw_exc.Etcd3Exception as e:
                    code, message = _error_body(e)
                    if attempt == 0 and self.creds.user and ("auth token" in message or code == 16):
                        with self._lock:
                            self._token = None
                        continue
                    if code == 14 or "no leader" in message or "leader changed" in message or "timed out" in message:
                        last = f"{host}: {message}"
                        break
                    raise _refusal(code, message, path) from None
                with self._lock:
                    self._first = i
                return dict(answer)
        hosts = ", ".join(f"{c.host}:{c.port}" for c in self._clients)
        raise EtcdUnavailable(f"etcd unreachable at {hosts} (last: {last})")

    # -- reads --

    def _range(self, key: str, end: str | None, revision: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            payload["range_end"] = _b64(end)
        if revision is not None:
            payload["revision"] = revision
        return self.call("kv/range", payload)

    def snapshot(self, revision: int | None = None) -> Snapshot:
        """Every table of the prefix as of `revision` (default: now), in one range request."""
        self.url.require_prefix()
        answer = self._range(self.prefix + "/", range_end(self.prefix + "/"), revision)
        tables: dict[str, str] = {}
        mods: dict[str, int] = {}
        meta = None
        for kv in answer.get("kvs", []):
            name = _unb64(kv["key"])[len(self.prefix) + 1 :]
            value = _unb64(kv.get("value", ""))
            if name == META:
                mods[META] = _int(kv.get("mod_revision"))
                meta = _json_or_none(value)
            elif name.endswith(".yml") and name[:-4] in TABLES:
                tables[name[:-4]] = value
                mods[name[:-4]] = _int(kv.get("mod_revision"))
        rev = revision if revision is not None else _int(answer.get("header", {}).get("revision"))
        return Snapshot(rev, tables, meta, mods)

    def revision(self) -> int:
        """The store's current revision (a count-only range: nothing transferred). Over the prefix when there
        is one, so a gateway's user (which may read only its prefix) can ask too."""
        if self.prefix:
            key = self.prefix + "/"
            payload = {"key": _b64(key), "range_end": _b64(range_end(key)), "count_only": True}
        else:
            payload = {"key": _b64("\0"), "count_only": True}
        answer = self.call("kv/range", payload)
        return _int(answer.get("header", {}).get("revision"))

    # -- writes --

    def push(
        self,
        tables: Mapping[str, str],
        expect_revision: int,
        meta: Mapping[str, Any] | None = None,
        base: Snapshot | None = None,
    ) -> int | None:
        """Make the prefix hold exactly `tables` (a table not given is deleted), in one txn guarded by
        the state at `expect_revision`: every table key and `_meta` must still have the mod_revision it
        had then (0 = absent), else Conflict and nothing is written. `base` is the snapshot read at
        `expect_revision` (read again when not given). Returns the new revision, None when nothing
        differs (nothing written)."""
        self.url.require_prefix()
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        if base is None or base.revision != expect_revision:
            try:
                base = self.snapshot(expect_revision)
            except Compacted as e:
                raise Conflict(
                    f"revision {expect_revision} was compacted: the store changed since; diff again",
                    self.revision(),
                ) from e
        changed = {n: tables.get(n) for n in TABLES if tables.get(n) != base.tables.get(n)}
        if not changed:
            return None
        size = request_size(changed, self.prefix)
        if size > self.max_request_bytes:
            big = max((n for n in changed if changed[n] is not None), key=lambda n: len(changed[n] or ""))
            raise TooLarge(
                f"{big}.yml: this push is about {size} bytes; etcd takes at most {self.max_request_bytes} per "
                "request (--max-request-bytes)"
            )
        compare = [
            {
                "key": _b64(self._key(n)),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": base.mod_revisions.get(n, 0),
            }
            for n in (*TABLES, META)
        ]
        ops: list[dict[str, Any]] = []
        for n, text in changed.items():
            if text is None:
                ops.append({"request_delete_range": {"key": _b64(self._key(n))}})
            else:
                ops.append({"request_put": {"key": _b64(self._key(n)), "value": _b64(text)}})
        meta_doc = {**dict(meta or {}), "id": uuid.uuid4().hex}  # tells our own write from someone else's
        ops.append({"request_put": {"key": _b64(meta_key(self.prefix)), "value": _b64(json.dumps(meta_doc))}})
        try:
            answer = self.call("kv/txn", {"compare": compare, "success": ops, "failure": []})
        except EtcdUnavailable:
            # The txn may have been applied before the answer was lost (and then retried on another
            # endpoint): our own _meta, by its id, says so.
            landed = self._landed(meta_doc["id"])
            if landed is None:
                raise
            return landed
        new = _int(answer.get("header", {}).get("revision"))
        if not answer.get("succeeded"):
            landed = self._landed(meta_doc["id"])
            if landed is not None:  # a retry of our own txn, after the first attempt succeeded unanswered
                return landed
            raise Conflict(
                f"{self.url}: changed since revision {expect_revision} (now {new}); nothing written: diff again",
                new,
            )
        return new

    def _landed(self, meta_id: str) -> int | None:
        """The revision of our own txn when its _meta (by id) is the current one; None otherwise."""
        try:
            snap = self.snapshot()
        except EtcdError:
            return None
        if snap.meta is not None and snap.meta.get("id") == meta_id:
            return snap.mod_revisions.get(META)
        return None

    def _key(self, name: str) -> str:
        return meta_key(self.prefix) if name == META else table_key(self.prefix, name)

    def rollback(
        self, to_revision: int, tables: list[str] | None = None, meta: Mapping[str, Any] | None = None
    ) -> int | None:
        """Write the tables (all, or the named ones) as they were at `to_revision` as a new revision, in
        one txn guarded by the current state. None when they are already so."""
        old = self.snapshot(to_revision)
        now = self.snapshot()
        return self.push(rollback_tables(old, now, tables), now.revision, meta, base=now)

    def history(self, limit: int = 20) -> tuple[list[HistoryEntry], bool]:
        """The last `limit` revisions that wrote a table or `_meta` of the prefix, newest first, and
        whether older ones were cut off by compaction. One range request per entry: the prefix at
        revision R tells the latest write C ≤ R (the largest mod_revision) and what it wrote; then R = C-1."""
        out: list[HistoryEntry] = []
        at: int | None = None
        while len(out) < limit:
            try:
                snap = self.snapshot(at)
            except Compacted:
                return out, True
            c = snap.config_revision
            if c == 0:
                break
            wrote = tuple(n for n in TABLES if snap.mod_revisions.get(n) == c)
            meta = snap.meta if snap.mod_revisions.get(META) == c else None
            out.append(HistoryEntry(c, wrote, meta))
            if c <= 1:
                break
            at = c - 1
        return out, False

    # -- watch --

    def watch(self, from_revision: int, idle_timeout: float = 30.0) -> Watch:
        """Changes of the prefix from `from_revision` on (inclusive), one `Change` per revision. Raises
        Compacted (from the iteration) when `from_revision` is already compacted away."""
        self.url.require_prefix()
        return Watch(self, self.prefix + "/", from_revision, idle_timeout)

    # -- fleet keys --

    def put_status(self, gateway_id: str, status: Mapping[str, Any]) -> int:
        answer = self.call("kv/put", {"key": _b64(status_key(gateway_id)), "value": _b64(json.dumps(dict(status)))})
        return _int(answer.get("header", {}).get("revision"))

    def presence(self, gateway_id: str, ttl: int, value: Mapping[str, Any] | None = None) -> Presence:
        """A presence key on a lease of `ttl` seconds: gone within ttl of the gateway's last refresh()."""
        p = Presence(self, gateway_id, ttl, dict(value or {"gateway_id": gateway_id}))
        p.refresh()
        return p

    def fleet(self) -> list[FleetEntry]:
        """Every gateway with a status or a presence key (two range requests), sorted by id."""
        status = self._json_range(STATUS_ROOT + "/")
        presence = self._json_range(PRESENCE_ROOT + "/")
        ids = sorted(set(status) | set(presence))
        return [FleetEntry(g, g in presence, status.get(g), presence.get(g)) for g in ids]

    def _json_range(self, root: str) -> dict[str, dict[str, Any]]:
        out = {}
        for kv in self._range(root, range_end(root), None).get("kvs", []):
            gid = _unb64(kv["key"])[len(root) :]
            doc = _json_or_none(_unb64(kv.get("value", "")))
            out[gid] = doc if isinstance(doc, dict) else {"invalid": True}
        return out

    def compact(self, revision: int) -> None:
        """Compact the history up to `revision` (physical: done when this returns). Needs root under RBAC."""
        self.call("kv/compaction", {"revision": revision, "physical": True})


def rollback_tables(old: Snapshot, now: Snapshot, tables: list[str] | None) -> dict[str, str]:
    """The desired tables of a rollback: `now`, with the named (default all) tables as in `old`."""
    names = list(TABLES) if tables is None else tables
    out = dict(now.tables)
    for n in names:
        if n in old.tables:
            out[n] = old.tables[n]
        else:
            out.pop(n, None)
    return out


@dataclass
class Presence:
    """A presence key on a lease. `refresh()` keeps the lease alive and, when it has expired (the
    gateway was cut off longer than the TTL), takes a new lease and writes the key again."""

    store: Store
    gateway_id: str
    ttl: int
    value: dict[str, Any]
    lease_id: int = 0

    def refresh(self) -> int:
        """Returns the TTL left (seconds)."""
        if self.lease_id:
            answer = self.store.call("lease/keepalive", {"ID": self.lease_id})
            left = _int(answer.get("result", {}).get("TTL", 0))
            if left > 0:
                return left
        grant = self.store.call("lease/grant", {"TTL": self.ttl, "ID": 0})
        self.lease_id = _int(grant.get("ID"))
        self.store.call(
            "kv/put",
            {"key": _b64(presence_key(self.gateway_id)), "value": _b64(json.dumps(self.value)), "lease": self.lease_id},
        )
        return _int(grant.get("TTL"))

    def revoke(self) -> None:
        """Gone now (a clean shutdown), not after the TTL."""
        if self.lease_id:
            with contextlib.suppress(EtcdError):
                self.store.call("kv/lease/revoke", {"ID": self.lease_id})
            self.lease_id = 0


class Watch:
    """An iterator of `Change`s, one per revision, from `start` on; `close()` from any thread ends it.

    The stream is etcd's watch over the JSON gateway (POST /v3/watch, one JSON object per line),
    read with the endpoint client's session. A dropped stream or `idle_timeout` seconds without a
    line (a member that hangs instead of closing) reconnects to the endpoints in order, from the
    revision after the last one delivered, so nothing is missed or repeated. Iteration raises
    Compacted when the start revision was compacted away, EtcdUnavailable when no endpoint takes
    the watch, PermissionDenied when the user may not read the prefix."""

    def __init__(self, store: Store, key: str, start: int, idle_timeout: float) -> None:
        self.store = store
        self.key = key
        self.next_revision = start  # the first revision not yet delivered
        self.idle_timeout = idle_timeout
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None

    def __iter__(self) -> Iterator[Change]:
        while not self._closed.is_set():
            resp = self._open()
            if resp is None:
                return
            try:
                yield from self._read(resp)
            except (requests.exceptions.RequestException, OSError, ValueError, AttributeError):
                # dropped or idle: reconnect from next_revision (AttributeError: urllib3 reading a
                # response that close() released under it)
                pass
            finally:
                resp.close()

    def _open(self) -> requests.Response | None:
        last = ""
        body = {
            "create_request": {
                "key": _b64(self.key),
                "range_end": _b64(range_end(self.key)),
                "start_revision": self.next_revision,
                # Periodic empty answers with the revision all events up to which were sent: a watch
                # reconnecting after a quiet spell starts there, not before a compaction it slept through.
                "progress_notify": True,
            }
        }
        renewed = False
        order = self.store._order()
        while order:
            if self._closed.is_set():
                return None
            client = self.store._clients[order[0]]
            try:
                if self.store.creds.user and self.store._token is None:
                    self.store._authenticate(client)
                resp = client.session.post(
                    client.get_url("/watch"),
                    json=body,
                    stream=True,
                    timeout=(self.store.timeout, self.idle_timeout),
                )
            except requests.exceptions.RequestException as e:
                last = f"{client.host}:{client.port}: {_short(e)}"
                order.pop(0)
                continue
            if resp.status_code != 200:
                code, message = _error_body(gw_exc.Etcd3Exception(resp.text))
                resp.close()
                if not renewed and self.store.creds.user and ("auth token" in message or code == 16):
                    renewed = True
                    self.store._token = None
                    continue
                refusal = _refusal(code, message, "watch")
                if isinstance(refusal, PermissionDenied):
                    raise refusal
                last = f"{client.host}:{client.port}: {message}"  # shutting down, no leader: the next one
                order.pop(0)
                continue
            with self._lock:
                self._response = resp
            if self._closed.is_set():
                resp.close()
                return None
            return resp
        hosts = ", ".join(f"{c.host}:{c.port}" for c in self.store._clients)
        raise EtcdUnavailable(f"etcd unreachable at {hosts} for the watch (last: {last})")

    def _read(self, resp: requests.Response) -> Iterator[Change]:
        plen = len(self.store.prefix) + 1
        for line in resp.iter_lines(chunk_size=None):
            if self._closed.is_set():
                return
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                err = chunk["error"]
                code, message = int(err.get("code", 0)), str(err.get("message", ""))
                refusal = _refusal(code, message, "watch")
                if isinstance(refusal, PermissionDenied):
                    raise refusal
                return  # the member is going away ("transport is closing", no leader): reconnect
            result = chunk.get("result", {})
            if result.get("canceled"):
                compact = _int(result.get("compact_revision"))
                if compact:
                    raise Compacted(compact, f"watch from revision {self.next_revision}: compacted up to {compact}")
                reason = str(result.get("cancel_reason", ""))
                if "permission denied" in reason:
                    raise PermissionDenied(f"watch {self.key}: {reason}")
                return  # canceled for another reason (member shutting down): reconnect
            events = result.get("events") or []
            if not events and not result.get("created"):  # a progress notification
                self.next_revision = max(self.next_revision, _int(result.get("header", {}).get("revision")) + 1)
                continue
            by_rev: dict[int, Change] = {}
            for ev in events:
                kv = ev["kv"]
                rev = _int(kv.get("mod_revision"))
                change = by_rev.setdefault(rev, Change(rev, {}, None))
                name = _unb64(kv["key"])[plen:]
                deleted = ev.get("type") == "DELETE"
                value = None if deleted else _unb64(kv.get("value", ""))
                if name == META:
                    by_rev[rev] = Change(rev, change.tables, _json_or_none(value) if value is not None else None)
                elif name.endswith(".yml") and name[:-4] in TABLES:
                    change.tables[name[:-4]] = value
            for rev in sorted(by_rev):
                if rev < self.next_revision:
                    continue
                self.next_revision = rev + 1
                yield by_rev[rev]
                if self._closed.is_set():
                    return

    def close(self) -> None:
        """End the iteration (from any thread): shuts the stream's socket down under the reader."""
        self._closed.set()
        with self._lock:
            resp = self._response
        if resp is not None:
            _shutdown(resp)


def _shutdown(resp: requests.Response) -> None:
    """Unblock a thread reading `resp` (etcd3gw's Watcher.stop does the same): shut its socket down."""
    with contextlib.suppress(Exception):
        fd = resp.raw.fileno()
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()
    with contextlib.suppress(Exception):
        resp.close()


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _short(e: BaseException) -> str:
    """A one-line reason for a network failure (requests' messages nest the whole urllib3 chain)."""
    text = str(getattr(e, "detail_text", None) or e)  # etcd3gw keeps requests' message in detail_text
    if text.startswith("{"):  # a 503/504 from the JSON gateway: etcd's own message ("no leader", "timed out")
        return _error_body(gw_exc.Etcd3Exception(text))[1] or text[:200]
    for marker in ("Connection refused", "timed out", "Name or service not known", "CERTIFICATE_VERIFY_FAILED"):
        if marker in text:
            return marker.lower() if marker != "CERTIFICATE_VERIFY_FAILED" else "TLS certificate verify failed"
    if "SSLError" in text or "SSL" in type(e).__name__:
        return "TLS handshake failed"
    return text.splitlines()[0][:200] if text else type(e).__name__


def _refusal(code: int, message: str, what: str) -> EtcdError:
    if "CommonName of client" in message:
        return PermissionDenied(
            f"{what}: etcd refuses a client certificate with a CommonName through its JSON gateway while auth "
            "is on (CVE-2018-16886): use a certificate without CN (the user comes from --etcd-user)"
        )
    if code == 7 or "permission denied" in message:
        return PermissionDenied(f"{what}: etcd: {message or 'permission denied'}")
    if code == 16 or "user name is empty" in message or "invalid auth token" in message:
        return PermissionDenied(f"{what}: etcd: {message or 'unauthenticated'}")
    if "compacted" in message:
        return Compacted(0, f"{what}: etcd: {message}")
    if "too large" in message or code == 8:
        return TooLarge(f"{what}: etcd: {message}")
    return EtcdError(f"{what}: etcd: {message or f'error {code}'}")
