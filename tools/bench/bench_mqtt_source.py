#!/usr/bin/env python3
"""MQTT source benchmark: messages/s from a local Mosquitto through the MQTT source to the FrameBus.

Two figures:
  * end to end: a device process publishes N messages as fast as it can on wildcard topics
    (`bench/<dev>/v`, QoS 0 and QoS 1); the source (one paho client thread) maps them to
    tags and publishes frames to a FrameBus that a drainer thread empties (standing in for the WAL
    writer). Rate = frames on the bus / time from the first to the last frame; loss and drops are
    counted (they must be 0 when the bus never pauses);
  * mapping + decoding alone (the per-message forwarding work) for a number payload and a JSON
    payload with a pointer, in-process, no broker.

    .venv/bin/python tools/bench/bench_mqtt_source.py --out build/bench [--quick]
writes build/bench/mqtt_source.json and build/bench/mqtt_source.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.config.model import BusCfg
from edge_gateway.drivers.mqtt_source import start_source
from edge_gateway.drivers.mqtt_source.mapping import TopicMap
from edge_gateway.drivers.mqtt_source.model import (
    MqttDriver,
    MqttEndpoint,
    MqttSourceCfg,
    MqttTag,
    Payload,
    Subscription,
)
from edge_gateway.testkit import LOOPBACK, Mosquitto

DEVICE = r"""
import sys, time
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5
port, n, qos, devices = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = Client(CallbackAPIVersion.VERSION2, client_id="bench-device", protocol=MQTTv5)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
info = None
for i in range(n):
    info = c.publish(f"bench/d{i % devices}/v", str(i), qos=qos)
    if qos and i % 500 == 499:
        info.wait_for_publish(30)
info.wait_for_publish(30)
c.disconnect()
c.loop_stop()
"""


def end_to_end(n: int, qos: int, devices: int = 100) -> dict[str, Any]:
    with Mosquitto() as broker:
        bus = FrameBus(BusCfg(capacity=65536))
        ep = MqttEndpoint("bench", "mqtt", LOOPBACK, broker.port, f"bench-src-{qos}")
        drv = MqttDriver(
            "bench",
            "static",
            "bench",
            "mqtt",
            MqttSourceCfg((Subscription("bench/+/v", qos),)),
        )
        tag = MqttTag("bench.{1}.v", "bench", "bench/+/v", Payload("number"), "int32")
        src = start_source(ep, [drv], [tag], bus)
        deadline = time.monotonic() + 10
        while not (
            src.connected
            and src.status()["drivers"]["bench"]["subscriptions"][0]["granted"]
            is not None
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("source did not connect")
            time.sleep(0.01)
        got: list[int] = []
        times: list[float] = []
        done = threading.Event()

        def drain() -> None:
            last = time.monotonic()
            while len(got) < n and time.monotonic() - last < 5.0:
                frames = bus.drain(4096, 0.05)
                if frames:
                    last = time.monotonic()
                    if not times:
                        times.append(last)
                    got.extend(f.value for f in frames)  # type: ignore[misc]
            times.append(time.monotonic())
            done.set()

        threading.Thread(target=drain, daemon=True).start()
        t0 = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-c",
                DEVICE,
                str(broker.port),
                str(n),
                str(qos),
                str(devices),
            ],
            check=True,
        )
        publish_s = time.monotonic() - t0
        done.wait(60)
        st = src.status()["drivers"]["bench"]
        src.stop()
    span = times[-1] - times[0] if len(times) == 2 else float("nan")
    in_order = all(
        got[i] < got[i + devices] for i in range(len(got) - devices)
    )  # per device order
    return {
        "qos": qos,
        "messages": n,
        "frames": len(got),
        "lost": n - len(got),
        "dropped": st["dropped"],
        "malformed": st["malformed"],
        "in_order_per_device": in_order,
        "publish_s": round(publish_s, 3),
        "frames_per_s": round(len(got) / span)
        if math.isfinite(span) and span > 0
        else None,
    }


def mapping_cost(n: int) -> dict[str, Any]:
    tags = [MqttTag("lab.{1}.temp", "d", "lab/+/temp", Payload("number"), "float32")]
    tags += [
        MqttTag(f"env.{{1}}.{k}", "d", "env/+", Payload("json", f"/s/{k}"), "float64")
        for k in ("t", "rh")
    ]
    m = TopicMap(tags)
    out: dict[str, Any] = {}
    for name, topic, payload, per in (
        ("number", "lab/r{}/temp", b"21.5", 1),
        ("json_2_pointers", "env/r{}", b'{"s": {"t": 21.5, "rh": 40.0}}', 2),
    ):
        topics = [topic.format(i % 200) for i in range(n)]
        t0 = time.perf_counter()
        for t in topics:
            for _tag, target in m.route(t):
                target.decoder(payload)
        dt = time.perf_counter() - t0
        out[name] = {
            "messages_per_s": round(n / dt),
            "frames_per_s": round(n * per / dt),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    runs = [end_to_end(n, qos) for qos in (0, 1)]
    cost = mapping_cost(n)
    result = {"end_to_end": runs, "mapping_decoding": cost, "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mqtt_source.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "## MQTT source (local Mosquitto → source → FrameBus)",
        "",
        "| QoS | messages | frames on the bus | lost | dropped | order per device | frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['qos']} | {r['messages']} | {r['frames']} | {r['lost']} | {r['dropped']} | "
            f"{'yes' if r['in_order_per_device'] else 'NO'} | {r['frames_per_s']} |"
        )
    lines += [
        "",
        "Forwarding work alone (topic → tags + payload → value, cached routes, 200 topics):",
        "",
        "| payload | messages/s | frames/s |",
        "|---|---|---|",
    ]
    for name, c in cost.items():
        lines.append(f"| {name} | {c['messages_per_s']} | {c['frames_per_s']} |")
    (out / "mqtt_source.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
