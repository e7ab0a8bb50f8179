#!/usr/bin/env python3
"""The benchmark's cloud side, a process of its own so its CPU is counted apart: it subscribes to the
gateway's batches, decodes them as a cloud service would (app/tests/consumer.py's decoding) and
counts what a measurement window needs.

    python tools/bench/e2e_subscriber.py --port P --topic T --period 0.1

Prints {"subscribed": true}. Then reads commands on stdin:
  `rate`             → {"frames": n, "at": wall-clock s}  (the bench watches the rate settle)
  `window T0 T1`     → start counting frames whose source timestamp (ms) lies in [T0, T1)
  `report`           → one JSON summary of the window, then exits.
The window is by source timestamp, not arrival, so a poll that was never made is missing from it
whatever the delivery latency: frames per tag in the window (a skipped poll is a missing frame),
gaps of 2 periods or more in each tag's timestamps and the longest gap (skips seen from the tag),
and the seqs never seen between the lowest and highest seq of the window (loss after commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

import paho.mqtt.client as mqtt
from edge_gateway.delivery.codec import decode_payload
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class Window:
    """Everything on_message updates: owned by paho's network thread, read under `lock`."""

    def __init__(self, period_ms: float) -> None:
        self.lock = threading.Lock()
        self.period_ms = period_ms
        self.t0 = self.t1 = -1
        self.frames = 0  # all frames ever received (the settling rate)
        self.seen = bytearray(1 << 20)  # seq → received once (index = seq)
        self.dups = 0
        self.per_tag: dict[str, int] = {}
        self.last_ts: dict[str, int] = {}
        # a tag's successive timestamps ≥ 2 periods apart (at least one poll missed), and the longest
        self.long_gaps = 0
        self.max_gap = 0  # ms
        self.seq_lo = 1 << 62
        self.seq_hi = 0
        self.in_window = 0
        self.lag_max = (
            0  # ms from a window batch's first source timestamp to its arrival here
        )
        self.lag_sum = 0
        self.lag_n = 0
        self.bad_q = 0

    def add(self, frames: list[dict[str, Any]]) -> None:
        with self.lock:
            self.frames += len(frames)
            t0, t1 = self.t0, self.t1
            per_tag, last_ts, seen = self.per_tag, self.last_ts, self.seen
            if frames and t0 <= frames[0]["ts"] < t1:
                lag = int(time.time() * 1000) - frames[0]["ts"]
                self.lag_max = max(self.lag_max, lag)
                self.lag_sum += lag
                self.lag_n += 1
            gap = (
                2 * self.period_ms
            )  # jitter moves a poll by well under a period; a skip doubles it
            for f in frames:
                seq = f["seq"]
                if seq >= len(seen):
                    seen.extend(bytes(max(len(seen), seq + 1 - len(seen))))
                if seen[seq]:
                    self.dups += 1
                    continue
                seen[seq] = 1
                ts = f["ts"]
                if t0 <= ts < t1:
                    tag = f["tag"]
                    per_tag[tag] = per_tag.get(tag, 0) + 1
                    prev = last_ts.get(tag)
                    if prev is not None:
                        d = ts - prev
                        if d >= gap:
                            self.long_gaps += 1
                        self.max_gap = max(self.max_gap, d)
                    last_ts[tag] = ts
                    self.in_window += 1
                    self.seq_lo = min(self.seq_lo, seq)
                    self.seq_hi = max(self.seq_hi, seq)
                    if f.get("q", "good") != "good":
                        self.bad_q += 1

    def report(self) -> dict[str, Any]:
        with self.lock:
            holes = (
                self.seen[self.seq_lo : self.seq_hi + 1].count(0) if self.seq_hi else 0
            )
            counts = sorted(self.per_tag.values())
            return {
                "window_ms": [self.t0, self.t1],
                "frames": self.in_window,
                "tags": len(self.per_tag),
                "per_tag_min": counts[0] if counts else 0,
                "per_tag_max": counts[-1] if counts else 0,
                "long_gaps": self.long_gaps,
                "max_gap_ms": self.max_gap,
                "lag_ms_mean": round(self.lag_sum / self.lag_n) if self.lag_n else None,
                "lag_ms_max": self.lag_max,
                "seq_range": [self.seq_lo, self.seq_hi] if self.seq_hi else None,
                "seq_holes": holes,
                "duplicates": self.dups,
                "bad_quality": self.bad_q,
                "frames_total": self.frames,
            }


def subscribe(port: int, topic: str, w: Window) -> mqtt.Client:
    """A paho MQTT 5 client at QoS 2 that decodes each batch (the `encoding` user property, as
    app/tests/consumer.py does) and counts it in one locked pass."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-e2e-cloud",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        user = dict(getattr(msg.properties, "UserProperty", []) or [])
        if "encoding" not in user:
            return  # status and acks
        body = decode_payload(msg.payload, user["encoding"])
        w.add(body if isinstance(body, list) else [body])

    c.on_connect = lambda c, *_: c.subscribe(topic, 2)
    c.on_subscribe = lambda *_: subscribed.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit(f"no SUBACK from 127.0.0.1:{port}")
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", default="/edge/#")
    ap.add_argument(
        "--period", type=float, required=True, help="the gateway's polling period, s"
    )
    a = ap.parse_args()
    w = Window(a.period * 1000)
    sub = subscribe(a.port, a.topic, w)
    print(json.dumps({"subscribed": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "rate":
            with w.lock:
                n = w.frames
            print(json.dumps({"frames": n, "at": time.time()}), flush=True)
        elif cmd[0] == "window":
            with w.lock:
                w.t0, w.t1 = int(cmd[1]), int(cmd[2])
            print(json.dumps({"window": True}), flush=True)
        elif cmd[0] == "report":
            r = w.report()
            sub.disconnect()
            sub.loop_stop()
            print(json.dumps(r), flush=True)
            return 0
    sub.disconnect()
    sub.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
