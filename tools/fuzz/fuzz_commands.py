"""Fuzz the cloud-command path end to end: mutated command payloads on a real Mosquitto, handled by a
real `edge-gateway` process that writes to a real pymodbus Modbus/TCP server.

    python tools/fuzz/fuzz_commands.py --seed 1 --count 10000 --out build/fuzz

Every payload is published (QoS 1, one publisher, so the gateway sees them in order) on the cmd topic
of a tag — writable tags of a driver with enable_write, a read-only tag, a tag of a driver without
enable_write, unknown tags. Payloads: valid commands, JSON-level mutations (types, ranges, fields,
ttl/ts, meta nesting and size), byte-level mutations (flips, truncation, insertion, bracket floods,
invalid UTF-8), retained publishes, exact replays of earlier payloads and seq reuse with another value.
The server records every Modbus write it receives. Checked, and any violation is a failure (exit 1):

  * the gateway process never dies, and its log holds no "crashed" / Traceback line;
  * every payload with a readable seq gets an ack (the seq as JSON or as a `"seq": N` the gateway's
    salvage finds); every replay gets the same result as the first outcome;
  * writes: the writes the server received, per register, are exactly the commands acked ok (replays
    excluded), in order, with the right raw value; a command our independent model of the rules says
    must be refused (retained, too large, too deep, unknown/read-only tag, write disabled, bad value,
    bad fields, expired, seq reused) is never acked ok; one the model says must run is acked ok;
  * at the end the uplink still delivers data frames (new seqs arrive on the batch topic).

A JSON summary goes to OUT/fuzz_commands.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))

from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTMessage, MQTTv5
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer
from tests.consumer import decode_payload

BIN = Path(sys.executable).parent
MAX_BYTES = 64 * 1024
MAX_DEPTH = 16
SEQ_MAX = (1 << 63) - 1
FLOAT32_MAX = 3.4028234663852886e38
SEQ_RE = re.compile(rb'"seq"\s*:\s*(-?[0-9]{1,19})(?![0-9])')
CMD = "/edge/fz/gw/cmd/"
WINDOW = 48  # commands with an expected ack in flight at most
ACK_STALL = 20.0  # no ack at all for this long: the command path is dead, stop sending


@dataclass(frozen=True)
class Tag:
    name: str
    table: str  # holding | coil | input
    addr: int
    datatype: str
    writable: bool  # RW on a driver with enable_write
    unit: int = 1


TAGS = [
    Tag("f.setpoint", "holding", 20, "int16", True),  # scale value / 10
    Tag("f.pump", "coil", 0, "bool", True),
    Tag("f.count", "holding", 30, "uint32", True),
    Tag("f.temp", "holding", 40, "float32", True),
    Tag("f.name", "holding", 50, "string", True),  # len 2: 4 ASCII characters
    Tag("f.level", "holding", 1, "int16", False),  # access R
    Tag("f.state", "input", 0, "uint16", False),  # input registers: R
    Tag(
        "g.setpoint", "holding", 20, "int16", False, unit=2
    ),  # g has no enable_write (so lint wants R)
]
BY_NAME = {t.name: t for t in TAGS}
WRITABLE = [t for t in TAGS if t.writable]

CONFIG = {
    "endpoints.yml": """
plc:
  scheme: tcp
  host: 127.0.0.1
  port: {port}
  opts: {{ timeout: 1000ms, rate: 5000pps }}
""",
    "drivers.yml": """
f:
  kind: static
  endpoint_id: plc
  proto: modbus
  cfg: {{ unit_id: 1, polling: 500ms, retry: 1, enable_write: true }}
g:
  kind: static
  endpoint_id: plc
  proto: modbus
  cfg: {{ unit_id: 2, polling: 500ms, retry: 1 }}
""",
    "variables.yml": """
- {{ tag: f.setpoint, driver_id: f, access: RW, address: {{ type: holding, addr: 20 }}, datatype: int16, scale: "value / 10" }}
- {{ tag: f.pump, driver_id: f, access: RW, address: {{ type: coil, addr: 0 }}, datatype: bool }}
- {{ tag: f.count, driver_id: f, access: RW, address: {{ type: holding, addr: 30 }}, datatype: uint32 }}
- {{ tag: f.temp, driver_id: f, access: RW, address: {{ type: holding, addr: 40 }}, datatype: float32 }}
- {{ tag: f.name, driver_id: f, access: RW, address: {{ type: holding, addr: 50, len: 2 }}, datatype: string }}
- {{ tag: f.level, driver_id: f, address: {{ type: holding, addr: 1 }}, datatype: int16 }}
- {{ tag: f.state, driver_id: f, address: {{ type: input, addr: 0 }}, datatype: uint16 }}
- {{ tag: g.setpoint, driver_id: g, address: {{ type: holding, addr: 20 }}, datatype: int16 }}
""",
    "connector.yml": """
cloud:
  kind: mqtt5
  endpoint: tcp://127.0.0.1:{broker}
  client_id: fuzz-gw
  tenant: fz
  device: gw
  qos: 1
  batch: 32
  max_interval: 100ms
  backoff: {{ base: 100ms, max: 1s }}
""",
    "gateway.yml": """
bus: {{ capacity: 65536 }}
wal: {{ dir: {dir}/wal, flush_ms: 50, max_bytes: 256MiB }}
metrics: {{ listen: "127.0.0.1:{metrics}" }}
control: {{ socket: {dir}/control.sock }}
""",
}


# -- the Modbus server: pymodbus, every write recorded ------------------------------------------------------
class Recording(ModbusSequentialDataBlock):  # type: ignore[misc]
    def __init__(
        self, unit: int, table: str, log: list[tuple[int, str, int, list[Any]]]
    ) -> None:
        super().__init__(0, [0] * 256)
        self.unit, self.table, self.log = unit, table, log
        self.armed = False

    def setValues(self, address: int, values: Any) -> None:
        if self.armed:  # address 1 is register 0 in pymodbus' legacy blocks
            vals = list(values) if isinstance(values, list | tuple) else [values]
            self.log.append((self.unit, self.table, address - 1, vals))
        super().setValues(address, values)


class Plc:
    def __init__(self) -> None:
        self.writes: list[tuple[int, str, int, list[Any]]] = []
        self.blocks: list[Recording] = []
        devices = {}
        for unit in (1, 2):
            b = {
                t: Recording(unit, t, self.writes)
                for t in ("holding", "coil", "input", "discrete")
            }
            self.blocks += b.values()
            devices[unit] = ModbusDeviceContext(
                hr=b["holding"], co=b["coil"], ir=b["input"], di=b["discrete"]
            )
        for b in self.blocks:
            b.armed = True
        self.port = free_port()
        self._ctx = ModbusServerContext(devices=devices, single=False)
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self._server = ModbusTcpServer(self._ctx, address=(LOOPBACK, self.port))
            await self._server.serve_forever()

        self._loop.run_until_complete(serve())

    def start(self) -> Plc:
        self._thread.start()
        from edge_gateway.testkit import wait_port

        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(
                self._server.shutdown(), self._loop
            ).result(5)
        self._thread.join(5)


# -- the cloud: publisher + ack / data subscriber -----------------------------------------------------------
class Cloud:
    def __init__(self, port: int) -> None:
        self.acks: dict[int, list[dict[str, Any]]] = {}
        self.bad_acks: list[str] = []
        self.max_data_seq = 0
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self._sub = threading.Event()
        c = Client(CallbackAPIVersion.VERSION2, client_id="fuzz-cloud", protocol=MQTTv5)
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._sub.set()
        c.max_inflight_messages_set(64)
        c.connect(LOOPBACK, port)
        c.subscribe([("/edge/fz/gw/ack/+", 1), ("/edge/fz/gw/batch", 1)])
        c.loop_start()
        assert self._sub.wait(10), "no SUBACK"
        self.client = c

    def _on_message(self, _c: Client, _u: object, msg: MQTTMessage) -> None:
        if msg.topic.endswith("/batch"):
            try:
                user = dict(getattr(msg.properties, "UserProperty", []) or [])
                frames = decode_payload(msg.payload, user.get("encoding", "identity"))
                top = max((f["seq"] for f in frames), default=0)
            except (ValueError, TypeError, KeyError):
                return
            with self.cv:
                self.max_data_seq = max(self.max_data_seq, top)
                self.cv.notify_all()
            return
        try:
            ack = json.loads(msg.payload)
            seq = int(msg.topic.rsplit("/", 1)[1])
            assert ack["seq"] == seq and ack["result"] in ("ok", "fail")
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            self.bad_acks.append(f"{msg.topic}: {msg.payload[:200]!r}: {e!r}")
            return
        with self.cv:
            self.acks.setdefault(seq, []).append(ack)
            self.cv.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 30
        while not info.is_published() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- payloads and the reference model ----------------------------------------------------------------------
@dataclass
class Case:
    n: int
    tag: str
    payload: bytes
    retained: bool = False
    kind: str = "valid"
    replay_of: int | None = None  # index of the case this one replays (same bytes)
    seqs: set[int] = field(default_factory=set)  # seqs an ack may be addressed to
    verdict: str = "unknown"  # exec | refuse | unknown (our own model of the rules)
    value: Any = None  # what an exec writes


def depth(v: Any, d: int = 1) -> int:
    if isinstance(v, dict):
        return max([d, *(depth(x, d + 1) for x in v.values())])
    if isinstance(v, list):
        return max([d, *(depth(x, d + 1) for x in v)])
    return d - 1 if d > 1 else 0


def readable_seqs(payload: bytes) -> set[int]:
    out: set[int] = set()
    try:
        body = json.loads(payload)
        if (
            isinstance(body, dict)
            and type(body.get("seq")) is int
            and 0 <= body["seq"] <= SEQ_MAX
        ):
            out.add(body["seq"])
    except Exception:  # noqa: BLE001, S110 - any failure: the salvage below decides
        pass
    m = SEQ_RE.search(payload[:4096])
    if m and 0 <= int(m.group(1)) <= SEQ_MAX:
        out.add(int(m.group(1)))
    return out


def fits(tag: Tag, v: Any) -> bool:
    dt = tag.datatype
    if dt == "bool":
        return type(v) is bool or (type(v) is int and v in (0, 1))
    if dt == "string":
        return isinstance(v, str) and v.isascii() and len(v) <= 4
    if type(v) not in (int, float) or not math.isfinite(v):
        return False
    if dt == "float32":
        return abs(v) <= FLOAT32_MAX
    raw = v * 10 if tag.name == "f.setpoint" else v
    lo, hi = {
        "int16": (-0x8000, 0x7FFF),
        "uint32": (0, 0xFFFF_FFFF),
        "uint16": (0, 0xFFFF),
    }[dt]
    r = round(raw)
    return math.isclose(raw, r, rel_tol=1e-9, abs_tol=1e-6) and lo <= r <= hi


def model(case: Case, now_ms: int) -> tuple[str, Any]:
    """Independent of the gateway's code: would this command be executed?"""
    if case.retained or len(case.payload) > MAX_BYTES:
        return "refuse", None
    try:
        body = json.loads(case.payload)
    except Exception:  # noqa: BLE001 - not JSON (or too deep for json itself)
        return "refuse", None
    if not isinstance(body, dict) or depth(body) > MAX_DEPTH:
        return "refuse", None
    if set(body) - {"seq", "value", "meta", "ttl", "ts", "tag"} or "value" not in body:
        return "refuse", None
    if type(body.get("seq")) is not int or not 0 <= body["seq"] <= SEQ_MAX:
        return "refuse", None
    if "tag" in body and body["tag"] != case.tag:
        return "refuse", None
    if (
        "meta" in body
        and body["meta"] is not None
        and not isinstance(body["meta"], dict)
    ):
        return "refuse", None
    if "ts" in body and type(body["ts"]) is not int:
        return "refuse", None
    tag = BY_NAME.get(case.tag)
    if tag is None or not tag.writable or not fits(tag, body["value"]):
        return "refuse", None
    if "ttl" in body:
        if body["ttl"] != "10m":
            return "unknown", body["value"]
        deadline = body.get("ts", now_ms) + 600_000
        if deadline < now_ms - 5_000:
            return "refuse", None  # expired
        if deadline < now_ms + 60_000:
            return "unknown", body["value"]  # too close to its deadline to tell
    return "exec", body["value"]


class Gen:
    def __init__(self, rnd: random.Random) -> None:
        self.r = rnd
        self.next_seq = 1000
        self.used: set[int] = set()

    def value(self, tag: Tag) -> Any:
        r = self.r
        if tag.datatype == "bool":
            return r.random() < 0.5
        if tag.datatype == "string":
            return "".join(r.choice("ABCXYZ0189-") for _ in range(r.randint(0, 4)))
        if tag.datatype == "float32":
            return round(r.uniform(-1e5, 1e5), 3)
        if tag.datatype == "uint32":
            return r.randint(0, 0xFFFF_FFFF)
        if tag.name.endswith("setpoint"):
            return round(r.uniform(-3000, 3000), 1)
        return r.randint(-100, 100)

    def body(self, tag: Tag) -> dict[str, Any]:
        self.next_seq += self.r.randint(1, 3)
        b: dict[str, Any] = {"seq": self.next_seq, "value": self.value(tag)}
        if self.r.random() < 0.3:
            b["ttl"], b["ts"] = "10m", int(time.time() * 1000)
        if self.r.random() < 0.3:
            b["meta"] = {"by": "fuzz", "n": self.r.randint(0, 9)}
        return b

    def json_mutation(
        self, b: dict[str, Any], tag: Tag
    ) -> tuple[str, dict[str, Any] | list[Any] | str]:
        r = self.r
        k = r.randrange(16)
        if k == 0:
            b["seq"] = r.choice(
                [
                    str(b["seq"]),
                    -b["seq"],
                    float(b["seq"]),
                    True,
                    None,
                    1 << 64,
                    [b["seq"]],
                ]
            )
        elif k == 1:
            b["value"] = r.choice(
                [
                    None,
                    "hot",
                    [1, 2],
                    {"x": 1},
                    {"b64": "!!"},
                    True,
                    1e39,
                    -1e39,
                    10**30,
                    2.5,
                ]
            )
        elif k == 2:
            b["value"] = r.choice(
                [40000, -40000, 3276.8, -3276.9, 0.05, 2, -1, 1 << 32, 1e-7]
            )
        elif k == 3:
            del b["value"]
        elif k == 4:
            b[r.choice(["colour", "Seq", "values", ""])] = 1
        elif k == 5:
            b["tag"] = r.choice(["f.pump", "other", tag.name, 5])
        elif k == 6:
            b["ttl"] = r.choice(["soon", -1, "0s", "1ms", 1e309, "-5s", None, "10m"])
        elif k == 7:
            b["ttl"], b["ts"] = (
                "10m",
                r.choice([0, int(time.time() * 1000) - 3_600_000, "now", 1.5]),
            )
        elif k == 8:
            b["meta"] = r.choice(["text", 5, [1], None, True])
        elif k == 9:
            m: Any = {}
            for _ in range(r.randint(MAX_DEPTH - 2, MAX_DEPTH + 3)):
                m = {"a": m}
            b["meta"] = m
        elif k == 10:
            b["meta"] = {"blob": "x" * r.choice([60_000, 65_500, 70_000, 200_000])}
        elif k == 11:
            return "json:array", [b]
        elif k == 12:
            return "json:string", json.dumps(json.dumps(b))
        elif k == 13:
            b["value"] = r.choice([float("nan"), float("inf"), -float("inf")])
        elif k == 14:
            b["meta"] = {"note": "[[[{{{" * r.randint(1, 400), "seq": r.randint(0, 5)}
        else:
            b["value"] = "".join(
                chr(r.randint(0, 0x2FF)) for _ in range(r.randint(1, 6))
            )
        return f"json:{k}", b

    def byte_mutation(self, raw: bytes) -> tuple[str, bytes]:
        r = self.r
        k = r.randrange(9)
        b = bytearray(raw)
        if k == 0 and b:
            for _ in range(r.randint(1, 4)):
                b[r.randrange(len(b))] = r.randrange(256)
        elif k == 1:
            b = b[: r.randrange(len(b) + 1)]
        elif k == 2:
            pos = r.randrange(len(b) + 1)
            b[pos:pos] = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
        elif k == 3:
            pos = r.randrange(len(b) + 1)
            b[pos:pos] = r.choice([b"[", b"{", b'{"a":']) * r.randint(10, 20_000)
        elif k == 4:
            b = bytearray(b"\xff\xfe" + bytes(b))
        elif k == 5:
            b = bytearray()
        elif k == 6:
            b = bytearray(
                bytes(b).replace(b'"value"', b'"value":1,"value"', 1)
            )  # duplicate key
        elif k == 7:
            b = bytearray(
                bytes(b).replace(b"}", b',"meta":' + b"[" * 100_000, 1)
            )  # the report's payload
        else:
            b = bytearray(b" \n\t" + bytes(b) + b"\x00")
        return f"bytes:{k}", bytes(b)

    def case(self, n: int, history: list[Case]) -> Case:
        """The next payload; it depends on the seed only (replays pick from outside the
        ack window, and the run waits for the original's ack before it sends one)."""
        r = self.r
        x = r.random()
        old_enough = history[-600 : -4 * WINDOW]
        if x < 0.06 and old_enough:  # an exact replay of an earlier command
            old = r.choice(old_enough)
            fresh = old.replay_of is None and old.kind != "seq_reused"
            if fresh and not old.retained and old.seqs:
                return Case(
                    n,
                    old.tag,
                    old.payload,
                    kind="replay",
                    replay_of=old.n,
                    seqs=set(old.seqs),
                )
        if (
            x < 0.09 and old_enough
        ):  # the seq of an earlier valid command, another value
            olds = [c for c in old_enough if c.kind == "valid" and c.verdict == "exec"]
            if olds:
                old = r.choice(olds)
                body = json.loads(old.payload)
                tag = BY_NAME[old.tag]
                for _ in range(5):
                    v = self.value(tag)
                    if v != body["value"]:
                        body["value"] = v
                        payload = json.dumps(body).encode()
                        c = Case(
                            n, old.tag, payload, kind="seq_reused", seqs={min(old.seqs)}
                        )
                        c.verdict = "refuse"
                        return c
        for _ in range(50):
            tag = r.choice(WRITABLE) if r.random() < 0.8 else r.choice([*TAGS, None])
            name = (
                tag.name
                if tag
                else r.choice(["f.nope", "x", "f.setpoint.x", "ü.tag", "a" * 200])
            )
            b = self.body(tag or WRITABLE[0])
            kind, retained = "valid", False
            y = r.random()
            body: Any = b
            if y < 0.35:
                kind, body = self.json_mutation(b, tag or WRITABLE[0])
            raw = (
                (body if isinstance(body, str) else json.dumps(body)).encode()
                if not isinstance(body, bytes)
                else body
            )
            if 0.35 <= y < 0.65:
                kind, raw = self.byte_mutation(raw)
            elif 0.65 <= y < 0.68:
                kind, retained = "retained", True
            if tag is None:
                kind = "unknown_tag:" + kind
            seqs = readable_seqs(raw)
            if seqs & self.used:
                continue  # an accidental reuse: keep the oracle simple, draw again
            self.used |= seqs
            return Case(n, name, raw, retained, kind, seqs=seqs)
        raise RuntimeError("could not draw a fresh payload")


# -- expected writes ---------------------------------------------------------------------------------------
def expected_write(tag: Tag, v: Any) -> tuple[str, int, list[Any]]:
    if tag.datatype == "bool":
        return "coil", tag.addr, [bool(v)]
    if tag.datatype == "string":
        data = v.encode().ljust(4, b"\0")
        return "holding", tag.addr, list(struct.unpack(">2H", data))
    if tag.datatype == "float32":
        return "holding", tag.addr, list(struct.unpack(">2H", struct.pack(">f", v)))
    if tag.datatype == "uint32":
        return (
            "holding",
            tag.addr,
            list(struct.unpack(">2H", struct.pack(">I", round(v)))),
        )
    raw = round(v * 10) if tag.name == "f.setpoint" else round(v)
    return "holding", tag.addr, [raw & 0xFFFF]


# -- the run -----------------------------------------------------------------------------------------------
def run(seed: int, count: int, out: Path) -> dict[str, Any]:
    rnd = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="fuzz-cmd-"))
    failures: list[str] = []
    broker = Mosquitto(workdir=work / "broker").start()
    plc = Plc().start()
    cfg = work / "cfg"
    cfg.mkdir()
    fill = {
        "port": plc.port,
        "broker": broker.port,
        "dir": str(work),
        "metrics": free_port(),
    }
    for name, text in CONFIG.items():
        (cfg / name).write_text(text.format(**fill))
    log_path = out / "fuzz_commands.gateway.log"
    logf = log_path.open("wb")
    gw = subprocess.Popen(
        [str(BIN / "edge-gateway"), "run", "--config", str(cfg)],
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    cloud = Cloud(broker.port)
    cases: list[Case] = []
    t0 = time.monotonic()
    fuzz_s = 0.0
    executed = 0
    try:
        # the command subscription is up once a probe is acked
        probe = Case(
            -1,
            "f.pump",
            json.dumps({"seq": 1, "value": True}).encode(),
            kind="probe",
            seqs={1},
        )
        probe.verdict, probe.value = "exec", True
        deadline = time.monotonic() + 30
        while not cloud.acks.get(1) and time.monotonic() < deadline:
            cloud.publish(CMD + probe.tag, probe.payload)
            with cloud.cv:
                cloud.cv.wait_for(lambda: cloud.acks.get(1), 1.0)
            if gw.poll() is not None:
                raise RuntimeError("the gateway exited at start")
        if not cloud.acks.get(1):
            raise RuntimeError("the gateway never acked the probe command")
        cases.append(probe)
        gen = Gen(rnd)
        gen.used.add(1)
        for n in range(count):
            c = gen.case(n, cases)
            if c.replay_of is None and c.kind != "seq_reused":
                c.verdict, c.value = model(c, int(time.time() * 1000))
            cases.append(c)
            with cloud.cv:  # pace: at most WINDOW commands waiting for their ack
                moving = cloud.cv.wait_for(
                    lambda: outstanding(cases, cloud) < WINDOW, ACK_STALL
                )
                if moving and c.kind in ("replay", "seq_reused"):
                    # the first outcome is known before its replay is sent
                    moving = cloud.cv.wait_for(
                        lambda c=c: any(s in cloud.acks for s in c.seqs), ACK_STALL
                    )  # type: ignore[misc]
            if not moving:
                failures.append(
                    f"acks stopped after {n} payloads (no ack for {ACK_STALL:.0f}s): "
                    f"gateway {'alive' if gw.poll() is None else 'exited'}"
                )
                cases.pop()
                break
            cloud.publish(CMD + c.tag, c.payload, retain=c.retained)
            if c.retained:
                cloud.publish(
                    CMD + c.tag, b"", retain=True
                )  # clear it again (an empty command: malformed)
            if n % 500 == 0 and gw.poll() is not None:
                failures.append(
                    f"gateway exited with {gw.returncode} after {n} payloads"
                )
                break
        with cloud.cv:
            cloud.cv.wait_for(lambda: outstanding(cases, cloud) == 0, 3 * ACK_STALL)
        fuzz_s = time.monotonic() - t0
        # the uplink still delivers data: new frames after the flood
        with cloud.cv:
            mark = cloud.max_data_seq
            delivering = cloud.cv.wait_for(lambda: cloud.max_data_seq > mark, 30)
        if not delivering:
            failures.append(f"no data delivered after the flood (last seq {mark})")
        alive = gw.poll() is None
        if not alive:
            failures.append(f"gateway died (exit {gw.returncode})")
        time.sleep(
            0.5
        )  # writes acked ok are already in the log; nothing else may arrive
        more, executed = check(cases, cloud, plc)
        failures += more
    finally:
        cloud.close()
        stop_pid(gw, timeout=20)
        logf.close()
        plc.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if gw.returncode != 0:
        failures.append(f"gateway exit code {gw.returncode} after SIGTERM")
    log_text = log_path.read_text(errors="replace")
    crashes = len(re.findall(r"crashed|Traceback", log_text))
    if crashes:
        failures.append(f"{crashes} crash/traceback lines in the gateway log")
    kinds: dict[str, int] = {}
    for c in cases:
        kinds[c.kind.split(":")[0]] = kinds.get(c.kind.split(":")[0], 0) + 1
    summary = {
        "tool": "fuzz_commands",
        "seed": seed,
        "count": count,
        "payloads": len(cases) - 1,
        "kinds": kinds,
        "with_readable_seq": sum(1 for c in cases if c.seqs) - 1,
        "acked_ok": executed - 1,  # replays acked ok (no write) not included
        "writes": len(plc.writes) - 1,
        "crashes": crashes + (0 if gw.returncode == 0 else 1),
        "wrong_writes": sum(1 for f in failures if f.startswith("wrong write")),
        "unacked": sum(1 for f in failures if f.startswith("no ack")),
        "failures": len(failures),
        "first_failures": failures[:30],
        "wrong_write_examples": [f for f in failures if f.startswith("wrong write")][
            :10
        ],
        "seconds": round(fuzz_s, 1),
        "gateway_log": str(log_path),
    }
    return summary


def outstanding(cases: list[Case], cloud: Cloud) -> int:
    n = 0
    for c in reversed(cases[-4 * WINDOW :]):
        if c.seqs and not any(s in cloud.acks for s in c.seqs):
            n += 1
    return n


def check(cases: list[Case], cloud: Cloud, plc: Plc) -> tuple[list[str], int]:
    """(failures, commands acked ok that must have written)"""
    fails: list[str] = [f"bad ack {b}" for b in cloud.bad_acks[:10]]
    by_n = {c.n: c for c in cases}
    expected: dict[tuple[int, str, int], list[tuple[int, list[Any]]]] = {}
    replays_seen: dict[int, int] = {}  # seq → acks consumed so far
    for c in cases:
        if not c.seqs:
            continue
        acks = next((cloud.acks[s] for s in sorted(c.seqs) if s in cloud.acks), None)
        if acks is None:
            fails.append(
                f"no ack for payload {c.n} ({c.kind}, seqs {sorted(c.seqs)}): {c.payload[:120]!r}"
            )
            continue
        seq = next(s for s in sorted(c.seqs) if s in cloud.acks)
        i = replays_seen.get(seq, 0)
        replays_seen[seq] = i + 1
        ack = acks[min(i, len(acks) - 1)]
        if c.replay_of is not None:
            first = cloud.acks[seq][0]
            if ack["result"] != first["result"]:
                fails.append(
                    f"replay {c.n} of {c.replay_of} acked {ack['result']}, first was {first['result']}"
                )
            continue
        if ack["result"] == "ok":
            if c.verdict == "refuse":
                fails.append(
                    f"wrong write: payload {c.n} ({c.kind}) acked ok: {c.payload[:160]!r}"
                )
                continue
            tag = BY_NAME[c.tag]
            value = c.value if c.value is not None else json.loads(c.payload)["value"]
            table, addr, regs = expected_write(tag, value)
            expected.setdefault((tag.unit, table, addr), []).append((c.n, regs))
        elif c.verdict == "exec":
            fails.append(
                f"valid payload {c.n} ({c.kind}) refused: {ack['error']}: {c.payload[:160]!r}"
            )
    got: dict[tuple[int, str, int], list[list[Any]]] = {}
    for unit, table, addr, vals in plc.writes:
        got.setdefault((unit, table, addr), []).append(vals)
    for key in sorted(set(expected) | set(got)):
        want = expected.get(key, [])
        have = got.get(key, [])
        if len(want) != len(have):
            fails.append(
                f"wrong write count on {key}: {len(have)} writes for {len(want)} commands acked ok"
            )
            continue
        for (n, regs), vals in zip(want, have, strict=True):
            if [int(v) for v in vals] != [int(v) for v in regs]:
                fails.append(
                    f"wrong write value on {key} for payload {n}: {vals} != {regs}"
                )
    del by_n
    return fails, sum(len(v) for v in expected.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary = run(a.seed, a.count, a.out.resolve())
    (a.out / "fuzz_commands.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "first_failures"}))
    for f in summary["first_failures"]:
        print("FAIL", f, file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
