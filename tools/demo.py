#!/usr/bin/env python3
"""`make demo`: the PLC simulator, a local Mosquitto and the gateway on config/, with values flowing.

Starts, and owns by PID:
  * Mosquitto on 127.0.0.1:18830 (connector.yml points there),
  * a socat pty pair: build/demo/ttyGW is the gateway's end of the "RS-485 line", build/demo/ttySIM the
    simulator's,
  * the PLC simulator (tools/plcsim, profile tools/plcsim/profiles/demo.yml): Modbus/TCP on 127.0.0.1:15020
    and Modbus RTU on the pty,
  * the OPC UA server (tools/plcsim/opcua_server.py) on 127.0.0.1:14840,
  * the S7 server (tools/plcsim/s7_server.py) on 127.0.0.1:10102,
  * `edge-gateway run --config config/` (its JSON log goes to build/demo/gateway.log),
and prints every frame that reaches the broker as `seq tag value q`, decoded from the batches, and every
command ack. Ctrl-C (or `--seconds N`, `make demo DEMO_SECONDS=N`) stops everything it started, newest first.

It suggests commands to try, each runnable as printed from the repository root (app/tests/test_demo.py runs
them): `edge-ctl status`, a cloud command sent with `tools/demo.py --send TAG=VALUE` (publishes it on the demo
broker and waits for the gateway's ack), and the same with `mosquitto_pub` when it is installed (`make venv`
installs the Debian package mosquitto-clients).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the reference consumer is test code: app/tests/consumer.py
sys.path.insert(0, str(ROOT / "app"))

from edge_gateway.delivery.codec import decode_value
from edge_gateway.testkit import LOOPBACK, Mosquitto, require, stop_pid, wait_port
from tests.consumer import BatchSubscriber, Message

BUILD = ROOT / "build" / "demo"
VENV_BIN = Path(sys.executable).parent
MQTT_PORT = 18830
PLC_PORT = 15020
OPCUA_PORT = 14840  # config/endpoints.yml plant_ua
S7_PORT = 10102  # config/endpoints.yml plc_s7
# config/connector.yml: tenant demo, device edge-01, the default cmd_topic and ack_topic.
CMD_TOPIC = "/edge/demo/edge-01/cmd/{tag}"
ACK_TOPIC = "/edge/demo/edge-01/ack/{seq}"


def suggestions() -> list[list[str]]:
    """The commands the demo tells the user to try, as argv lists (run from the repository root)."""
    venv = os.path.relpath(VENV_BIN, ROOT)
    out = [
        [f"{venv}/edge-ctl", "--config", "config", "status"],
        [f"{venv}/python", "tools/demo.py", "--send", "plant.setpoint_c=23.5"],
    ]
    if shutil.which("mosquitto_pub"):
        topic = CMD_TOPIC.format(tag="plant.setpoint_c")
        payload = json.dumps({"seq": 1, "value": 23.5})
        out.append(
            [
                "mosquitto_pub",
                "-h",
                LOOPBACK,
                "-p",
                str(MQTT_PORT),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ]
        )
    return out


class Demo:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: Mosquitto | None = None
        self.sub: BatchSubscriber | None = None
        self.log = None

    def spawn(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kw)
        self.procs.append((name, proc))
        return proc

    def start(self) -> None:
        BUILD.mkdir(parents=True, exist_ok=True)
        for port, what in (
            (MQTT_PORT, "Mosquitto"),
            (PLC_PORT, "the PLC simulator"),
            (OPCUA_PORT, "the OPC UA simulator"),
            (S7_PORT, "the S7 simulator"),
        ):
            if _listening(port):
                raise SystemExit(
                    f"demo: 127.0.0.1:{port} is taken; {what} of another demo still running?"
                )
        self.broker = Mosquitto(port=MQTT_PORT, workdir=BUILD / "mosquitto").start()
        print(f"demo: Mosquitto on {LOOPBACK}:{MQTT_PORT}", flush=True)

        gw_tty, sim_tty = BUILD / "ttyGW", BUILD / "ttySIM"
        for p in (gw_tty, sim_tty):
            p.unlink(missing_ok=True)
        self.spawn(
            "socat",
            [
                require("socat"),
                "-d",
                "-d",
                f"pty,raw,echo=0,link={gw_tty}",
                f"pty,raw,echo=0,link={sim_tty}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(
            lambda: gw_tty.exists() and sim_tty.exists(),
            5,
            "socat did not create the pty pair",
        )
        print(
            f"demo: RS-485 line emulated by a pty pair ({gw_tty.name} ↔ {sim_tty.name})",
            flush=True,
        )

        sim_log = open(BUILD / "plcsim.log", "wb")  # noqa: SIM115 - closed in stop()
        self.spawn(
            "plcsim",
            [
                sys.executable,
                str(ROOT / "tools" / "plcsim" / "plcsim.py"),
                str(ROOT / "tools" / "plcsim" / "profiles" / "demo.yml"),
                "--tcp",
                str(PLC_PORT),
                "--rtu",
                str(sim_tty),
                "--baud",
                "19200",
            ],
            stdout=sim_log,
            stderr=subprocess.STDOUT,
        )
        wait_port(PLC_PORT, 20)
        print(
            f"demo: PLC simulator on {LOOPBACK}:{PLC_PORT} and {sim_tty.name} (log: build/demo/plcsim.log)"
        )
        for name, script, args, port in (
            ("opcua", "opcua_server.py", ["--port", str(OPCUA_PORT)], OPCUA_PORT),
            ("s7", "s7_server.py", ["--port", str(S7_PORT)], S7_PORT),
        ):
            log = open(BUILD / f"plcsim-{name}.log", "wb")  # noqa: SIM115 - the child holds it
            self.spawn(
                f"plcsim-{name}",
                [
                    sys.executable,
                    str(ROOT / "tools" / "plcsim" / script),
                    "--host",
                    LOOPBACK,
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            wait_port(port, 30)
            print(
                f"demo: {'OPC UA' if name == 'opcua' else 'S7'} simulator on {LOOPBACK}:{port}"
                f" (log: build/demo/plcsim-{name}.log)"
            )

        self.sub = BatchSubscriber(
            LOOPBACK, MQTT_PORT, ("/edge/#",), on_frame=_print_frame, keep=False
        ).start()
        self.log = open(BUILD / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.spawn(
            "edge-gateway",
            [str(VENV_BIN / "edge-gateway"), "run", "--config", str(ROOT / "config")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        print("demo: edge-gateway run --config config/ (log: build/demo/gateway.log)")
        print(
            "demo: try, from the repository root, the status, or a cloud command (its ack shows up below):"
        )
        for argv in suggestions():
            print(f"      {shlex.join(argv)}")
        if not shutil.which("mosquitto_pub"):
            print(
                "      (mosquitto_pub: Debian package mosquitto-clients, which `make venv` installs as root)"
            )
        print(f"\n{'seq':>8} {'tag':<28} {'value':<20} q", flush=True)

    def watch(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds if seconds else None
        acked: set[str] = set()
        while deadline is None or time.monotonic() < deadline:
            if self.sub is not None:
                for seq, ack in list(self.sub.acks.items()):
                    if seq not in acked:
                        acked.add(seq)
                        print(f"demo: ack {_ack_line(ack)}", flush=True)
            for name, proc in self.procs:
                if proc.poll() is not None:
                    print(
                        f"demo: {name} exited with {proc.returncode}", file=sys.stderr
                    )
                    if name == "edge-gateway":
                        tail = (
                            (BUILD / "gateway.log")
                            .read_text(errors="replace")
                            .splitlines()[-15:]
                        )
                        print("\n".join(tail), file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            stop_pid(proc)
            if name == "edge-gateway":
                print(f"demo: edge-gateway stopped ({proc.returncode})", flush=True)
        self.procs.clear()
        if self.sub is not None:
            self.sub.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.log is not None:
            self.log.close()


def _print_frame(f: dict[str, Any], m: Message) -> None:
    value = decode_value(f.get("value"))
    if isinstance(value, float):
        value = f"{value:.6g}"
    dup = "  (dup possible)" if f.get("dup") else ""
    sys.stdout.write(f"{f['seq']:>8} {f['tag']:<28} {value!s:<20} {f['q']}{dup}\n")
    sys.stdout.flush()


def _ack_line(ack: dict[str, Any]) -> str:
    error = f" ({ack['error']})" if ack.get("error") else ""
    return f"seq {ack.get('seq')} {ack.get('tag')}: {ack.get('result')}{error}"


def send(assignment: str, timeout: float = 15.0) -> int:
    """`--send TAG=VALUE`: one cloud command to the running demo; prints the gateway's ack, 0 if it is ok."""
    tag, sep, text = assignment.partition("=")
    if not sep or not tag:
        raise SystemExit(f"demo: --send wants TAG=VALUE, not {assignment!r}")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text  # a string tag
    if not _listening(MQTT_PORT):
        print(
            f"demo: nothing listens on {LOOPBACK}:{MQTT_PORT}: start `make demo` first",
            file=sys.stderr,
        )
        return 2
    seq = time.time_ns() // 1_000_000  # ms: a fresh seq for every send
    sub = BatchSubscriber(LOOPBACK, MQTT_PORT, (ACK_TOPIC.format(seq=seq),)).start()
    try:
        sub.publish(
            CMD_TOPIC.format(tag=tag),
            json.dumps({"seq": seq, "value": value}).encode(),
            qos=1,
        )
        if not sub.wait_for(lambda s: str(seq) in s.acks, timeout):
            print(
                f"demo: no ack for seq {seq} within {timeout:g}s (is the gateway connected?)",
                file=sys.stderr,
            )
            return 1
        ack = sub.acks[str(seq)]
    finally:
        sub.stop()
    print(f"ack {_ack_line(ack)}")
    return 0 if ack.get("result") == "ok" else 1


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def _wait(cond: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {message}")
        time.sleep(0.02)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("DEMO_SECONDS") or 0),
        help="0 = until Ctrl-C",
    )
    p.add_argument(
        "--send",
        metavar="TAG=VALUE",
        help="send one cloud command to the running demo (e.g. plant.setpoint_c=23.5), print its ack, exit",
    )
    args = p.parse_args(argv)
    if args.send:
        return send(args.send)
    demo = Demo()
    signal.signal(
        signal.SIGTERM, _interrupt
    )  # `kill PID` stops the demo like Ctrl-C does
    try:
        demo.start()
        return demo.watch(args.seconds)
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
        return 0
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
