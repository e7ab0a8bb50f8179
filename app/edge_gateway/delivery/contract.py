"""The connector contract: what a transport (MQTT 5, a dummy, later Kafka or gRPC) gives the runner.

The runner (delivery.runner.Runner) owns delivery: cursor → batcher → in-flight window → final ack →
cursor ack, rewinds, backoff with jitter, the QoS-downgrade marks, stats and metrics. A transport
only moves bytes: it connects, publishes one batch message, reports that message's final ack or
refusal, hands incoming commands over, publishes command acks, and closes.

Threads: one thread (the runner's) makes every call into the transport, and the transport calls
the runner's `Events` only from inside those calls (typically from `io()`). A transport therefore
needs no locks and its client library may be single-threaded (paho's external-loop API).
The runner's loop is, per turn:

    poll = transport.poll()                      # what to wait on: a selectable, write interest, ready
    select([waker, poll.read], [poll.read] if poll.write else [], timeout)
    transport.io(readable, writable)             # do the I/O; events fire from here

A transport without a socket (in-memory, a file) returns `Poll()` with `ready=True` whenever it has
events to report, so the runner does not sleep on them.

A connector registers a `ConnectorPlugin` in the entry-point group `edge_gateway.connectors` (name =
the connector.yml `kind`; core/registry.py finds it): its `factory(cfg, window=…, connect_timeout=…,
state_dir=…)` makes the transport, `cfg` being the config.model.Connector of that entry, and its
`schema` is the JSON Schema of one connector.yml entry of that kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Session:
    """What a transport learnt when its connection came up."""

    max_qos: int = 2  # the delivery guarantee the far end grants (MQTT CONNACK MaximumQoS)
    receive_max: int = 65535  # how many messages may be unacknowledged at once
    resumed: bool = False  # a persistent session was resumed


@dataclass
class Message:
    """One batch, encoded by the runner; the transport maps it onto its protocol."""

    payload: bytes
    qos: int  # 0 = fire and forget (final ack when written), 1 = at least once, 2 = exactly once
    seq_first: int
    seq_last: int
    count: int
    encoding: str  # zstd | identity
    cover: str  # "first-last": the WAL range the batch accounts for
    dup: bool = False  # frames may have been delivered before (QoS downgrade)
    tag: str | None = None  # set when every frame goes on its own (connector batch: 1)
    content_type: str = "application/json"

    @property
    def properties(self) -> list[tuple[str, str]]:
        """The batch's user properties, in their documented order."""
        props = [
            ("seq_first", str(self.seq_first)),
            ("seq_last", str(self.seq_last)),
            ("count", str(self.count)),
            ("encoding", self.encoding),
            ("cover", self.cover),
        ]
        if self.dup:
            props.append(("dup", "possible"))
        return props


@dataclass
class Poll:
    """What the runner's select waits on for the transport."""

    read: Any = None  # an object with fileno() (a socket), or None
    write: bool = False  # wait for `read` to become writable too
    ready: bool = False  # the transport has buffered input or events to report: do not sleep


class Events(Protocol):
    """Implemented by the runner. Called by the transport on the runner's thread, from inside its calls."""

    def on_connected(self, session: Session) -> bool:
        """The connection is up. False: the runner will replace the transport's client (skip the
        online status and subscriptions)."""
        ...

    def on_disconnected(self, why: str) -> None:
        """The connection attempt or the connection ended (refused, lost, timed out)."""
        ...

    def on_published(self, token: int, error: str | None) -> None:
        """The final ack of a `publish()` (error None) or its refusal; may come from inside publish()."""
        ...

    def on_command(self, tag: str, payload: bytes, retained: bool) -> None:
        """A cloud command for `tag` arrived."""
        ...

    def on_error(self, why: str) -> None:
        """Something to show as last_error that does not end the connection."""
        ...


class Transport(Protocol):
    kind: str
    commands: bool  # set by the runner before open(): subscribe to commands
    # Optional `keeps_unsettled` (default True): after a reconnect the transport resends its unsettled
    # QoS≥1 messages itself (MQTT persistent session). False: a lost connection loses them and the
    # runner rewinds to acked+1.

    def bind(self, events: Events) -> None:
        """Called once, before anything else."""
        ...

    def open(self) -> None:
        """Start a connection attempt. Raise OSError/ValueError when it fails right away;
        otherwise report `events.on_connected` or `events.on_disconnected` later."""
        ...

    def publish(self, msg: Message) -> int:
        """Send one batch; returns a token that `events.on_published` names."""
        ...

    def reply(self, seq: int, payload: bytes) -> None:
        """Publish the ack of command `seq` (best effort, no final ack reported)."""
        ...

    def poll(self) -> Poll: ...

    def io(self, readable: bool, writable: bool) -> None:
        """Do the pending I/O after the runner's select (also called on its timeout, for keepalives)."""
        ...

    def abort(self, discard: bool = False) -> None:
        """Close the connection now, no goodbye. `discard`: forget the client and its unsettled
        messages too (the next open() starts afresh: new TLS files, credentials, session state).
        Never called from inside an event."""
        ...

    def close(self, deadline: float) -> None:
        """Clean stop after the runner drained its window: say goodbye (MQTT: `offline` status,
        DISCONNECT), bounded by `deadline` (time.monotonic())."""
        ...

    def status(self) -> dict[str, Any]:
        """Fields for `edge-ctl connector … stats`: `broker` and `client_id` first, then the rest."""
        ...


Factory = Callable[..., Transport]


@dataclass(frozen=True)
class ConnectorPlugin:
    """What an `edge_gateway.connectors` entry point names."""

    name: str  # the connector.yml kind
    factory: Factory
    schema: dict[str, Any] | None = None  # one connector.yml entry; `#/$defs/duration`, `size` are shared
    # validated entry → config.model.Connector: build(loader, id, entry, src), problems at their file:line;
    # None: the generic builder (the delivery keys the runner reads, every other key in `options`)
    build: Callable[[Any, str, dict[str, Any], Any], Any] | None = None
