#!/usr/bin/env python3
"""Side by side on the same work: edge-gateway, ThingsBoard IoT Gateway 3.8.5 and Node-RED 4.1.8 +
node-red-contrib-modbus 5.23.3 polling the same PLC simulator (10 units x 360 holding registers,
Modbus/TCP) and publishing to the same local Mosquitto, one after the other in one run.

For each gateway and poll period it measures, over a steady window after a warm-up: datapoints/s
delivered to an independent subscriber, the share of what was offered, CPU (% of one core, and ms
per 1 000 delivered datapoints, from /proc/PID/stat) of the gateway, the simulator, the broker and
the subscriber (this process) by PID, and resident memory (VmRSS) of the gateway process. Then, at the 1 s period, a
broker outage: how many poll cycles of the outage window never reach the subscriber (counted the
same way for both: distinct sample timestamps per device; edge-gateway also by seq gaps).

ThingsBoard needs its own venv (build/peers/tb-venv, created on first use: PyPI `thingsboard-gateway`
plus what its Modbus connector would pip-install at run time) and, against a plain Mosquitto, a stub
that answers its `getSessionLimits` RPC (see ../../../shared PEERS notes in tools/peers/README.md).
Node-RED is installed by this script from tools/peers/node-red/package-lock.json (`npm ci`) into
build/peers/node-red; where node/npm or the npm registry is missing it is skipped with the reason.
Everything listens on 127.0.0.1; every process started here is ended by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))
# procstat: CPU and RSS by PID, read as bench_e2e reads them
sys.path.insert(0, str(ROOT / "tools" / "bench"))

import paho.mqtt.client as mqtt
from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, stop_pid
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from procstat import cpu_seconds, rss_mib
from tests.consumer import BatchSubscriber, Message

UNITS, REGS = 10, 360
TB_VERSION = "3.8.5"
TB_VENV = ROOT / "build" / "peers" / "tb-venv"
# What TB's Modbus connector pip-installs when it loads (PEERS.md): pre-installed so it never tries.
TB_EXTRAS = ["pymodbus==3.9.2", "pyserial", "pyserial-asyncio"]
NR_LOCK = (
    ROOT / "tools" / "peers" / "node-red"
)  # package.json + package-lock.json (npm generated)
NR_DIR = ROOT / "build" / "peers" / "node-red"
NR_MAIN = NR_DIR / "node_modules" / "node-red" / "red.js"


def tb_ready() -> str | None:
    """Create the ThingsBoard venv if needed; None when ready, else why it is not."""
    tb = TB_VENV / "bin" / "thingsboard-gateway"
    if tb.exists():
        return None
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(TB_VENV)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                str(TB_VENV / "bin" / "pip"),
                "install",
                "-q",
                f"thingsboard-gateway=={TB_VERSION}",
                *TB_EXTRAS,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(TB_VENV, ignore_errors=True)
        detail = getattr(e, "stderr", "") or str(e)
        return f"cannot install thingsboard-gateway {TB_VERSION}: {detail.strip().splitlines()[-1:]}"
    return None


def node_red_ready() -> str | None:
    """`npm ci` from the lock file into build/peers/node-red if needed; None when ready, else why not."""
    lock = (NR_LOCK / "package-lock.json").read_bytes()
    stamp = NR_DIR / ".installed-lock"
    if NR_MAIN.exists() and stamp.exists() and stamp.read_bytes() == lock:
        return None
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node/npm not installed (Debian: apt-get install -y nodejs npm)"
    NR_DIR.mkdir(parents=True, exist_ok=True)
    for f in ("package.json", "package-lock.json"):
        shutil.copyfile(NR_LOCK / f, NR_DIR / f)
    try:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
            cwd=NR_DIR,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        last = [x for x in detail.strip().splitlines() if x.strip()][-2:]
        return f"npm ci of node-red + node-red-contrib-modbus 5.23.3 failed (registry unreachable?): {last}"
    stamp.write_bytes(lock)
    return None


# -- the shared workload --------------------------------------------------------------------------------------
class Simulator:
    def __init__(self, workdir: Path) -> None:
        profile = {
            "units": [
                {
                    "unit": u,
                    "points": [
                        {
                            "table": "holding",
                            "addr": a,
                            "type": "uint16",
                            "value": {"counter": {"start": a, "per_s": 1}},
                        }
                        for a in range(REGS)
                    ],
                }
                for u in range(1, UNITS + 1)
            ]
        }
        path = workdir / "profile.yml"
        path.write_text(yaml.safe_dump(profile))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tools/plcsim/plcsim.py"),
                str(path),
                "--tcp",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        self.port = int(dict(kv.split("=") for kv in line.split()[1:])["tcp"])

    def stop(self) -> None:
        stop_pid(self.proc)  # type: ignore[arg-type]


@dataclass
class Tally:
    """Datapoints seen by the subscriber, and the distinct sample timestamps per device."""

    total: int = 0
    stamps: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    high: int = 0  # edge-gateway: highest seq, and the holes below it
    holes: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, device: str, ts: int, n: int) -> None:
        with self.lock:
            self.total += n
            self.stamps[device].add(
                ts // 100
            )  # 100 ms resolution: one poll cycle per stamp

    def cover(self, lo: int, hi: int) -> None:
        with self.lock:
            if lo > self.high:
                self.holes.update(range(self.high + 1, lo))
            for s in range(lo, hi + 1):
                self.holes.discard(s)
            self.high = max(self.high, hi)

    def cycles(self, t0: float, t1: float) -> int:
        """Poll cycles seen between two wall-clock times, summed over devices."""
        lo, hi = int(t0 * 10), int(t1 * 10)
        with self.lock:
            return sum(
                sum(1 for s in st if lo <= s < hi) for st in self.stamps.values()
            )


# -- ThingsBoard IoT Gateway -----------------------------------------------------------------------------------
class SessionLimitsStub:
    """Against a plain broker TB waits forever for ThingsBoard's answer to `getSessionLimits`; this answers."""

    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="tb-stub"
        )
        self.c.on_connect = lambda c, *_: c.subscribe("v1/devices/me/rpc/request/+", 1)
        self.c.on_message = self._answer
        self.c.connect(LOOPBACK, port)
        self.c.loop_start()

    def _answer(self, c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        req = json.loads(msg.payload or b"{}")
        if req.get("method") != "getSessionLimits":
            return
        limits = {
            "messages": None,
            "telemetryMessages": None,
            "telemetryDataPoints": None,
        }
        body = {
            "maxPayloadSize": 65536,
            "maxInflightMessages": 100,
            "rateLimits": limits,
            "gatewayRateLimits": limits,
        }
        c.publish(msg.topic.replace("/request/", "/response/"), json.dumps(body), qos=1)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class ThingsBoard:
    name = f"ThingsBoard IoT Gateway {TB_VERSION}"

    def __init__(
        self, workdir: Path, sim_port: int, broker: Mosquitto, period_ms: int
    ) -> None:
        self.dir = workdir / "tb"
        cfg = self.dir / "config"
        (self.dir / "logs").mkdir(parents=True)
        cfg.mkdir()
        pkg = next(TB_VENV.glob("lib/python*/site-packages/thingsboard_gateway/config"))
        logs = json.loads((pkg / "logs.json").read_text())
        for h in logs["handlers"].values():
            if h.get("class", "").endswith("StreamHandler"):
                h["level"] = "ERROR"
        (cfg / "logs.json").write_text(json.dumps(logs))
        main = json.loads((pkg / "tb_gateway.json").read_text())
        tb = main["thingsboard"]
        tb.update(
            host=LOOPBACK,
            port=broker.port,
            remoteShell=False,
            remoteConfiguration=False,
        )
        tb["statistics"]["enable"] = False
        tb["security"] = {"type": "accessToken", "accessToken": "peer-compare"}
        main["storage"]["type"] = "memory"
        main["storage"]["max_records_count"] = 1_000_000
        main["grpc"]["enabled"] = False
        main["connectors"] = [
            {"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}
        ]
        (cfg / "tb_gateway.json").write_text(json.dumps(main, indent=1))
        slaves = [
            {
                "host": LOOPBACK,
                "port": sim_port,
                "type": "tcp",
                "method": "socket",
                "unitId": u,
                "deviceName": f"Unit {u}",
                "deviceType": "plc",
                "timeout": 35,
                "byteOrder": "BIG",  # TB defaults to LITTLE: values would be wrong
                "wordOrder": "BIG",
                "retries": 1,
                "pollPeriod": period_ms,
                "connectAttemptTimeMs": 500,
                "connectAttemptCount": 5,
                "waitAfterFailedAttemptsMs": 1000,
                "attributes": [],
                "timeseries": [
                    {
                        "tag": "hr_${address}",
                        "type": "16uint",
                        "functionCode": 3,
                        "objectsCount": 1,
                        "address": f"0-{REGS - 1}",
                        "maxRegistersPerRequest": 125,
                    }
                ],
                "attributeUpdates": [],
                "rpc": [],
            }
            for u in range(1, UNITS + 1)
        ]
        (cfg / "modbus.json").write_text(
            json.dumps({"master": {"slaves": slaves}}, indent=1)
        )
        self.stub = SessionLimitsStub(broker.port)
        self.log = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [str(TB_VENV / "bin" / "thingsboard-gateway")],
            cwd=self.dir,
            env=dict(os.environ, TB_GW_CONFIG_DIR=str(cfg)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def subscriber(broker: Mosquitto, tally: Tally) -> Any:
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="peer-cloud-tb",
            protocol=MQTTProtocolVersion.MQTTv5,
        )

        def on_message(_c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
            for device, samples in json.loads(msg.payload).items():
                for s in samples:
                    tally.add(device, int(s["ts"]), len(s.get("values", {})))

        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.on_connect = lambda c, *_: c.subscribe("v1/gateway/telemetry", 1)
        c.on_message = on_message
        c.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        c.connect_async(LOOPBACK, broker.port, clean_start=False, properties=props)
        c.loop_start()
        return c

    def stop(self) -> None:
        stop_pid(self.proc, timeout=10)  # type: ignore[arg-type]
        self.stub.stop()
        self.log.close()


# -- Node-RED + node-red-contrib-modbus ------------------------------------------------------------------------
class NodeRed:
    name = "Node-RED 4.1.8 + node-red-contrib-modbus 5.23.3"
    READS = tuple(
        (a, min(125, REGS - a)) for a in range(0, REGS, 125)
    )  # 0+125, 125+125, 250+110

    def __init__(
        self, workdir: Path, sim_port: int, broker: Mosquitto, period_ms: int
    ) -> None:
        d = workdir / "node-red"
        d.mkdir()
        (d / "node_modules").symlink_to(
            NR_DIR / "node_modules"
        )  # userDir/node_modules: the palette
        flows: list[dict[str, Any]] = [
            {"id": "flow", "type": "tab", "label": "peer"},
            {
                # Node-RED reads any property equal to a config node's id as a dependency on it:
                # an id equal to the node's own name is a "circular config node dependency".
                "id": "client1",
                "type": "modbus-client",
                "name": "plc",
                "clienttype": "tcp",
                "bufferCommands": True,
                "stateLogEnabled": False,
                "queueLogEnabled": False,
                "failureLogEnabled": True,
                "tcpHost": LOOPBACK,
                "tcpPort": str(sim_port),
                "tcpType": "DEFAULT",
                "unit_id": "1",
                "commandDelay": "1",
                "clientTimeout": "1000",
                "reconnectOnTimeout": True,
                "reconnectTimeout": "2000",
                "parallelUnitIdsAllowed": True,
            },
            {
                "id": "broker1",
                "type": "mqtt-broker",
                "name": "cloud",
                "broker": LOOPBACK,
                "port": str(broker.port),
                "clientid": "peer-node-red",
                "autoConnect": True,
                "usetls": False,
                "protocolVersion": "4",
                "keepalive": "60",
                "cleansession": True,
            },
            {
                "id": "out",
                "type": "mqtt out",
                "z": "flow",
                "name": "",
                "topic": "",  # msg.topic: nodered/<unit>/<address>
                "qos": "2",
                "retain": "false",
                "broker": "broker1",
                "wires": [],
            },
        ]
        for u in range(1, UNITS + 1):
            for adr, qty in self.READS:
                flows.append(
                    {
                        "id": f"r{u}_{adr}",
                        "type": "modbus-read",
                        "z": "flow",
                        "name": "",
                        "topic": f"nodered/{u}/{adr}",
                        "showStatusActivities": False,
                        "logIOActivities": False,
                        "showErrors": True,
                        "unitid": str(u),
                        "dataType": "HoldingRegister",
                        "adr": str(adr),
                        "quantity": str(qty),
                        "rate": str(period_ms),
                        "rateUnit": "ms",
                        "delayOnStart": False,
                        "startDelayTime": "",
                        "server": "client1",
                        "useIOFile": False,
                        "ioFile": "",
                        "useIOForPayload": False,
                        "emptyMsgOnFail": False,
                        "wires": [["out"], []],
                    }
                )
        (d / "flows.json").write_text(json.dumps(flows, indent=1))
        (d / "settings.js").write_text(
            "module.exports = {\n"
            f'  uiHost: "{LOOPBACK}", uiPort: {free_port()},\n'
            "  httpAdminRoot: false, httpNodeRoot: false,  // headless: no editor, no HTTP nodes\n"
            '  flowFile: "flows.json", credentialSecret: false,\n'
            '  logging: { console: { level: "warn", metrics: false, audit: false } }\n'
            "};\n"
        )
        self.log = open(workdir / "node-red.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                shutil.which("node") or "node",
                str(NR_MAIN),
                "--settings",
                str(d / "settings.js"),
                "--userDir",
                str(d),
            ],
            cwd=d,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def subscriber(broker: Mosquitto, tally: Tally) -> Any:
        """One JSON array of register values per message: each value is one datapoint. The payload
        carries no timestamp, so the arrival time stands for it."""
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="peer-cloud-nr",
            protocol=MQTTProtocolVersion.MQTTv5,
        )

        def on_message(_c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
            values = json.loads(msg.payload)
            tally.add(msg.topic.split("/")[1], int(time.time() * 1000), len(values))

        c.on_connect = lambda c, *_: c.subscribe("nodered/#", 2)
        c.on_message = on_message
        c.connect_async(LOOPBACK, broker.port)
        c.loop_start()
        return c

    def stop(self) -> None:
        stop_pid(self.proc, timeout=10)  # type: ignore[arg-type]
        self.log.close()


# -- edge-gateway -------------------------------------------------------------------------------------------------
class EdgeGateway:
    name = "edge-gateway"

    def __init__(
        self, workdir: Path, sim_port: int, broker: Mosquitto, period_ms: int
    ) -> None:
        cfg = workdir / "edge"
        cfg.mkdir()
        docs: dict[str, Any] = {
            "endpoints.yml": {
                "plc": {
                    "scheme": "tcp",
                    "host": LOOPBACK,
                    "port": sim_port,
                    "opts": {"timeout": "1000ms"},
                }
            },
            "drivers.yml": {
                f"u{u}": {
                    "endpoint_id": "plc",
                    "proto": "modbus",
                    "cfg": {
                        "unit_id": u,
                        "polling": f"{period_ms}ms",
                        "max_regs_per_req": 125,
                    },
                }
                for u in range(1, UNITS + 1)
            },
            "variables.yml": [
                {
                    "tag": f"u{u}.hr_{a}",
                    "driver_id": f"u{u}",
                    "address": {"type": "holding", "addr": a},
                    "datatype": "uint16",
                }
                for u in range(1, UNITS + 1)
                for a in range(REGS)
            ],
            "connector.yml": {
                "cloud": {
                    "kind": "mqtt5",
                    "endpoint": broker.url,
                    "client_id": "peer-edge",
                    "tenant": "peer",
                    "device": "edge",
                    "qos": 2,
                    "batch": 512,
                    "max_interval": "200ms",
                    "compression": "zstd",
                    "backoff": {"base": "200ms", "max": "2s"},
                }
            },
            "gateway.yml": {
                "wal": {"dir": str(workdir / "wal"), "flush_ms": 100},
                "metrics": {"listen": f"{LOOPBACK}:{free_port()}"},
                "control": {"socket": str(workdir / "control.sock")},
            },
        }
        for name, doc in docs.items():
            (cfg / name).write_text(yaml.safe_dump(doc, sort_keys=False))
        self.log = open(workdir / "edge.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "edge-gateway"),
                "run",
                "--config",
                str(cfg),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def subscriber(broker: Mosquitto, tally: Tally) -> Any:
        last: list[Message | None] = [None]

        def on_frame(f: dict[str, Any], m: Message) -> None:
            tally.add(f["tag"].split(".", 1)[0], int(f["ts"]), 1)
            if m is not last[0]:
                last[0] = m
                tally.cover(int(m.props["seq_first"]), int(m.props["seq_last"]))

        return BatchSubscriber(
            LOOPBACK,
            broker.port,
            client_id="peer-cloud-edge",
            session_expiry=3600,
            on_frame=on_frame,
            keep=False,
        ).start()

    def stop(self) -> None:
        stop_pid(self.proc, timeout=10)  # type: ignore[arg-type]
        self.log.close()


def _stop_subscriber(sub: Any) -> None:
    if isinstance(sub, BatchSubscriber):
        sub.stop()
    else:
        sub.disconnect()
        sub.loop_stop()


# -- one run --------------------------------------------------------------------------------------------------------
def run(
    kind: type, period_ms: int, warm: float, window: float, outage: float = 0.0
) -> dict[str, Any]:
    offered = UNITS * REGS * 1000 / period_ms
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(
            workdir=work / "broker",
            extra=[
                "persistence true",
                f"persistence_location {work / 'broker'}/",
                "user root",
            ],
        ).start()
        sim = Simulator(work)
        tally = Tally()
        sub = kind.subscriber(broker, tally)
        gw = kind(work, sim.port, broker, period_ms)
        try:
            deadline = time.monotonic() + 90
            while tally.total == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            if tally.total == 0:
                raise RuntimeError(f"{kind.name}: nothing delivered in 90 s")
            time.sleep(warm)
            assert broker.proc is not None
            pids = {
                "gateway": gw.proc.pid,
                "simulator": sim.proc.pid,
                "broker": broker.proc.pid,
                "subscriber": os.getpid(),  # the subscriber's paho thread; the main thread sleeps
            }
            c0, t0 = tally.total, time.monotonic()
            cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
            wall0 = time.time()
            rss = []
            while time.monotonic() - t0 < window:
                rss.append(rss_mib(gw.proc.pid))
                time.sleep(min(1.0, max(0.0, window - (time.monotonic() - t0))))
            c1, t1 = tally.total, time.monotonic()
            cpu = {n: cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
            delivered = c1 - c0
            out: dict[str, Any] = {
                "gateway": kind.name,
                "period_ms": period_ms,
                "offered_per_s": round(offered),
                "delivered_per_s": round(delivered / (t1 - t0)),
                "delivered_share": round(delivered / (t1 - t0) / offered, 3),
                "cpu_pct_one_core": round(100 * cpu["gateway"] / (t1 - t0), 1),
                "cpu_ms_per_1000": {
                    n: round(1e6 * c / delivered, 2) if delivered else None
                    for n, c in cpu.items()
                },
                "rss_mib": round(max(rss), 1),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            if outage:
                out.update(_outage(broker, tally, outage, period_ms, wall0))
            return out
        finally:
            gw.stop()
            _stop_subscriber(sub)
            sim.stop()
            broker.stop()


def _outage(
    broker: Mosquitto, tally: Tally, outage: float, period_ms: int, wall0: float
) -> dict[str, Any]:
    """Broker down for `outage` s; count the poll cycles of [wall0, back + 5 s] the subscriber never saw."""
    broker.stop()
    time.sleep(outage)
    broker.start()
    back = time.time()
    end = back + 5.0
    before = -1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # drained when nothing new arrives for 5 s
        time.sleep(5.0)
        if tally.total == before and time.time() > end + 5:
            break
        before = tally.total
    expected = int((end - wall0) * 1000 / period_ms) * UNITS
    seen = tally.cycles(wall0, end)
    out = {
        "outage_s": outage,
        "outage_cycles_expected": expected,
        "outage_cycles_delivered": seen,
        "outage_cycles_lost": max(
            0, expected - seen - UNITS
        ),  # ±1 cycle per device at the window edges
    }
    if tally.high:
        out["outage_seq_gaps"] = len(tally.holes)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="two poll periods, one run each, short windows, a 10 s outage",
    )
    ap.add_argument("--only", choices=("edge", "tb", "nr"), help="measure one gateway")
    ap.add_argument(
        "--runs",
        type=int,
        default=2,
        help="runs at 100 ms (the table's point); other periods once",
    )
    args = ap.parse_args(argv)
    periods = [1000, 100] if args.quick else [1000, 500, 250, 100]
    warm, window, outage = (6.0, 8.0, 10.0) if args.quick else (8.0, 15.0, 30.0)
    runs_at = {100: 1 if args.quick else max(1, args.runs)}
    figures: dict[str, Any] = {
        "workload": f"{UNITS} units x {REGS} holding registers, Modbus/TCP simulator",
        "runs": [],
        "skipped": {},
    }
    kinds: list[type] = []
    if args.only in (None, "edge"):
        kinds.append(EdgeGateway)
    if args.only in (None, "tb"):
        why = tb_ready()
        if why is None:
            kinds.append(ThingsBoard)
        else:
            figures["thingsboard"] = f"not measured: {why}"
            figures["skipped"][ThingsBoard.name] = why
    if args.only in (None, "nr"):
        why = node_red_ready()
        if why is None:
            kinds.append(NodeRed)
        else:
            figures["skipped"][NodeRed.name] = why
    for kind in kinds:
        for p in periods:
            for i in range(1, runs_at.get(p, 1) + 1):
                try:
                    r = {"run": i, **run(kind, p, warm, window)}
                except (RuntimeError, OSError, AssertionError) as e:
                    r = {
                        "gateway": kind.name,
                        "period_ms": p,
                        "run": i,
                        "error": str(e),
                    }
                print(json.dumps(r), flush=True)
                figures["runs"].append(r)
        if kind is NodeRed:
            continue  # its payload has no timestamp: outage cycles cannot be attributed
        try:
            r = run(kind, 1000, warm, 5.0, outage=outage)
        except (RuntimeError, OSError, AssertionError) as e:
            r = {"gateway": kind.name, "period_ms": 1000, "error": str(e)}
        print(json.dumps(r), flush=True)
        figures.setdefault("outage", []).append(r)
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
