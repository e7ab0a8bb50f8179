"""A reference consumer of the uplink: subscribes to a gateway's topics and decodes its batches.

What a cloud-side service does with our payloads, in a few lines: read the `encoding` user
property, decompress, parse the JSON array, and use `seq` to drop duplicates and spot gaps.
`make demo`, the tests and the end-to-end benchmark all use it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_gateway.delivery.codec import decode_payload


@dataclass
class Message:
    topic: str
    props: dict[str, str]  # user properties
    content_type: str | None
    frames: list[dict[str, Any]]
    received: float


@dataclass
class BatchSubscriber:
    """Subscribes `filters` (default: everything under /edge/) and collects decoded frames.

    With `session_expiry > 0` and a fixed `client_id` the broker keeps its subscription and queued
    messages while it is away (and, with broker persistence, across a broker restart)."""

    host: str
    port: int
    filters: tuple[str, ...] = ("/edge/#",)
    client_id: str = ""
    session_expiry: int = 0
    on_frame: Callable[[dict[str, Any], Message], None] | None = None
    keep: bool = True  # keep every message (tests); False for long runs that only count
    messages: list[Message] = field(default_factory=list)
    status: list[bytes] = field(default_factory=list)
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    frames_seen: int = 0
    payload_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    _client: Any = None
    _subscribed: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, timeout: float = 10.0) -> BatchSubscriber:
        cl = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        cl.on_connect = self._on_connect
        cl.on_message = self._on_message
        cl.on_subscribe = lambda *a: self._subscribed.set()
        cl.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # paho sleeps on floats; its hint says int
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        cl.connect_async(self.host, self.port, keepalive=10, clean_start=False, properties=props)
        cl.loop_start()
        self._client = cl
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> BatchSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        assert self._client is not None
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect(self, cl: mqtt.Client, _ud: object, _flags: Any, rc: Any, _props: Any) -> None:
        if not rc.is_failure:
            cl.subscribe([(f, 2) for f in self.filters])

    def _on_message(self, _cl: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception as e:  # noqa: BLE001 - a consumer records a bad payload instead of dying on it
            self.errors.append(f"{msg.topic}: {type(e).__name__}: {e}")

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        user = dict(getattr(props, "UserProperty", []) or [])
        if "encoding" not in user:  # status, acks, commands: plain payloads
            if msg.topic.endswith("/status"):
                self.status.append(msg.payload)
            elif "/ack/" in msg.topic:
                self.acks[msg.topic.rsplit("/", 1)[1]] = json.loads(msg.payload)
            return
        body = decode_payload(msg.payload, user["encoding"])
        frames = body if isinstance(body, list) else [body]
        m = Message(msg.topic, user, getattr(props, "ContentType", None), frames, time.monotonic())
        with self._lock:
            self.frames_seen += len(frames)
            self.payload_bytes += len(msg.payload)
            if self.keep:
                self.messages.append(m)
        if self.on_frame is not None:
            for f in frames:
                self.on_frame(f, m)

    # -- views for tests and tools -----------------------------------------------------------------------
    def frames(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f for m in self.messages for f in m.frames]

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames()]

    def wait_for(self, predicate: Callable[[BatchSubscriber], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)


def main(argv: list[str] | None = None) -> int:
    """`cd app && python -m tests.consumer`: print frames as `seq tag value q` lines (make demo), or
    count them until `--count` distinct seqs arrived and print a JSON summary (benchmarks)."""
    import argparse
    import sys

    from edge_gateway.delivery.codec import decode_value

    p = argparse.ArgumentParser(prog="edge-consumer", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", action="append", help="topic filter (default /edge/#)")
    p.add_argument("--count", type=int, default=0, help="exit after this many distinct seqs")
    p.add_argument("--seconds", type=float, default=0.0, help="exit after this long (0 = until Ctrl-C)")
    p.add_argument("--quiet", action="store_true", help="no frame lines, only the summary")
    args = p.parse_args(argv)

    seen: set[int] = set()
    dups = 0
    first_at: list[float] = []  # wall clock, so another process can compare with its own start
    last_at = [0.0]
    done = threading.Event()
    lock = threading.Lock()

    def on_frame(f: dict[str, Any], m: Message) -> None:
        nonlocal dups
        with lock:
            if not first_at:
                first_at.append(time.time())
            if f["seq"] in seen:
                dups += 1
            else:
                last_at[0] = time.time()
            seen.add(f["seq"])
            if args.count and len(seen) >= args.count:
                done.set()
        if not args.quiet:
            v = decode_value(f.get("value"))
            dup = "  dup?" if f.get("dup") else ""
            sys.stdout.write(f"{f['seq']:>8} {f['tag']:<28} {v!s:<20} {f['q']}{dup}\n")
            sys.stdout.flush()

    sub = BatchSubscriber(args.host, args.port, tuple(args.topic or ["/edge/#"]), on_frame=on_frame, keep=False)
    sub.start()
    if args.quiet or args.count:
        print(json.dumps({"subscribed": True}), flush=True)
    else:
        print(f"{'seq':>8} {'tag':<28} {'value':<20} q", flush=True)
    try:
        done.wait(args.seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
    if args.quiet or args.count:
        missing = (max(seen) - min(seen) + 1 - len(seen)) if seen else 0
        summary = {
            "frames": len(seen),
            "duplicates": dups,
            "seq_min": min(seen) if seen else None,
            "seq_max": max(seen) if seen else None,
            "missing_in_range": missing,
            "payload_bytes": sub.payload_bytes,
            "first_frame_at": first_at[0] if first_at else None,
            "last_new_frame_at": last_at[0] or None,
            "errors": sub.errors[:5],
        }
        print(json.dumps(summary), flush=True)
    return 0 if not sub.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
