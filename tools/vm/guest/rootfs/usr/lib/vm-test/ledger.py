"""VM test ledger: the cloud side inside the VM. Subscribes to the gateway's topics on the local
Mosquitto (QoS 2) and appends the seq range every data message covers (the `cover` user property) to
/data/vm-test/ledger.jsonl (one JSON line per message: its cover and [seq, tag, ts, value, q] per
frame, so a reused seq shows as two different frames), fsynced, so what was received survives power cuts. Test-only (tools/vm/).
Tells systemd READY=1 once subscribed: the unit is ordered Before=edge-gateway.service, so a fresh broker
session never misses the gateway's first messages after a boot."""

from __future__ import annotations

import json
import os
import sys
import threading

import paho.mqtt.client as mqtt
import sdnotify
from edge_gateway.delivery.codec import decode_payload
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

OUT = "/data/vm-test/ledger.jsonl"


def main() -> int:
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fd = os.open(OUT, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    # A power cut can leave the last line half written: end it, so the next message starts a line.
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
        os.fsync(fd)
    lock = threading.Lock()
    notify = sdnotify.SystemdNotifier()

    def on_connect(cl, _ud, _flags, rc, _props):
        if not rc.is_failure:
            cl.subscribe([("/edge/#", 2)])

    def on_subscribe(*_a):
        notify.notify("READY=1")

    def on_message(_cl, _ud, msg):
        user = dict(getattr(msg.properties, "UserProperty", []) or [])
        if "encoding" not in user:
            return
        body = decode_payload(msg.payload, user["encoding"])
        frames = body if isinstance(body, list) else [body]
        rows = [
            [int(f["seq"]), f.get("tag"), f.get("ts"), f.get("value"), f.get("q")]
            for f in frames
        ]
        seqs = [r[0] for r in rows]
        cover = user.get("cover", f"{min(seqs)}-{max(seqs)}")
        line = (
            json.dumps({"topic": msg.topic, "cover": cover, "frames": rows}) + "\n"
        ).encode()
        with lock:
            os.write(fd, line)
            os.fsync(fd)

    cl = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="vm-ledger",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    cl.on_connect = on_connect
    cl.on_subscribe = on_subscribe
    cl.on_message = on_message
    cl.reconnect_delay_set(0.1, 1)
    cl.connect_async("127.0.0.1", 1883, keepalive=30)
    cl.loop_forever(retry_first_connection=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
