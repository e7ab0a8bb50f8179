#!/usr/bin/env python3
"""`make fleet-demo`: three gateways configured from a 3-member etcd by one `edge-cfg push`.

Starts, and ends by PID when done (or on Ctrl-C), newest first:
  * a 3-member etcd cluster on 127.0.0.1 (app/edge_gateway/testkit_etcd.py),
  * Mosquitto, and the PLC simulator: Modbus/TCP, plus one RS-485 line per gateway (a socat pty pair
    whose gateway end is `<state>/ttyGW`, so the one shared configuration names it relatively),
  * three `edge-gateway run --config build/fleet-demo/gwN/boot` whose bootstrap gateway.yml has a
    `config_source:` block: prefix /edge/config/v1/line1 (shared), gateway_id gwN, a metrics port each.
The gateways start on an empty prefix and wait; then one `edge-cfg push` writes config/ (rewritten for
the demo: `{gateway_id}` as MQTT client id and device, WAL and control socket relative to the state
directory) and all three apply that revision; `edge-cfg fleet status` prints the fleet. Everything is
under build/fleet-demo/ (logs: gwN/gateway.log, etcd/m*.log).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))

from edge_gateway.testkit import LOOPBACK, Mosquitto, free_port, require, stop_pid
from edge_gateway.testkit_etcd import Etcd

BUILD = ROOT / "build" / "fleet-demo"
BIN = Path(sys.executable).parent
PREFIX = "/edge/config/v1/line1"
GATEWAYS = ("gw1", "gw2", "gw3")


def fleet_config(dest: Path, plc_port: int, mqtt_port: int) -> None:
    """config/ as one configuration for the whole line."""
    shutil.copytree(
        ROOT / "config", dest, ignore=shutil.ignore_patterns("examples", "README.md")
    )

    def edit(name: str, *pairs: tuple[str, str]) -> None:
        p = dest / name
        text = p.read_text()
        for old, new in pairs:
            assert old in text, (name, old)
            text = text.replace(old, new, 1)
        p.write_text(text)

    edit(
        "endpoints.yml",
        ("port: 15020", f"port: {plc_port}"),
        ("host: ../build/demo/ttyGW", "host: ttyGW"),
    )
    edit(
        "connector.yml",
        ("tcp://127.0.0.1:18830", f"tcp://{LOOPBACK}:{mqtt_port}"),
        ("client_id: edge-01", 'client_id: "{gateway_id}"'),
        ("device: edge-01", 'device: "{gateway_id}"'),
    )
    edit(
        "gateway.yml",
        ("dir: ../build/demo/wal", "dir: wal"),
        ("socket: ../build/demo/control.sock", "socket: control.sock"),
    )


def bootstrap(dest: Path, endpoints: list[str], gw: str, metrics_port: int) -> None:
    dest.mkdir(parents=True)
    eps = ", ".join(endpoints)
    (dest / "gateway.yml").write_text(
        "# bootstrap: the configuration itself comes from etcd\n"
        "config_source:\n"
        "  etcd:\n"
        f"    endpoints: [{eps}]\n"
        f"    prefix: {PREFIX}\n"
        f"    gateway_id: {gw}\n"
        f"metrics: {{ listen: {LOOPBACK}:{metrics_port} }}\n"
    )


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(
            f"http://{LOOPBACK}:{port}/metrics", timeout=2
        ) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the three to apply",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=BUILD,
        help="where everything goes, emptied first (default build/fleet-demo)",
    )
    args = ap.parse_args(argv)
    return run(args.workdir.resolve(), args.timeout)


def run(build: Path, timeout: float) -> int:
    global BUILD
    BUILD = build
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    procs: list[tuple[str, subprocess.Popen[Any]]] = []
    etcd = Etcd(members=3, workdir=BUILD / "etcd")
    broker: Mosquitto | None = None
    try:
        etcd.start()
        print(f"fleet-demo: etcd cluster of 3 on {etcd.endpoints}", flush=True)
        broker = Mosquitto(workdir=BUILD / "mosquitto").start()
        print(f"fleet-demo: Mosquitto on {LOOPBACK}:{broker.port}", flush=True)
        sim_ttys = []
        for gw in GATEWAYS:
            state = BUILD / gw / "state"
            state.mkdir(parents=True)
            a, b = state / "ttyGW", BUILD / gw / "ttySIM"
            procs.append(
                (
                    f"socat {gw}",
                    subprocess.Popen(
                        [
                            require("socat"),
                            f"pty,raw,echo=0,link={a}",
                            f"pty,raw,echo=0,link={b}",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                )
            )
            sim_ttys.append(b)
        deadline = time.monotonic() + 5
        while not all(t.exists() for t in sim_ttys) and time.monotonic() < deadline:
            time.sleep(0.05)
        sim_cmd = [
            sys.executable,
            str(ROOT / "tools/plcsim/plcsim.py"),
            str(ROOT / "tools/plcsim/profiles/demo.yml"),
        ]
        sim_cmd += [
            "--tcp",
            "0",
            "--baud",
            "19200",
            *[x for t in sim_ttys for x in ("--rtu", str(t))],
        ]
        sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, text=True)
        procs.append(("plcsim", sim))
        assert sim.stdout is not None
        ready = sim.stdout.readline()
        plc_port = int(dict(kv.split("=") for kv in ready.split()[1:])["tcp"])
        print(
            f"fleet-demo: PLC simulator on {LOOPBACK}:{plc_port} and 3 RS-485 ptys",
            flush=True,
        )

        ports = {}
        for gw in GATEWAYS:
            ports[gw] = free_port()
            bootstrap(BUILD / gw / "boot", etcd.endpoints.split(","), gw, ports[gw])
            log = open(BUILD / gw / "gateway.log", "wb")  # noqa: SIM115 - the child owns it
            argv_gw = [
                str(BIN / "edge-gateway"),
                "run",
                "--config",
                str(BUILD / gw / "boot"),
            ]
            argv_gw += ["--state-dir", str(BUILD / gw / "state"), "--log-level", "info"]
            procs.append(
                (gw, subprocess.Popen(argv_gw, stdout=log, stderr=subprocess.STDOUT))
            )
        print(
            f"fleet-demo: {', '.join(GATEWAYS)} started on the empty prefix {PREFIX} (waiting for a revision)"
        )

        fleet_config(BUILD / "line1", plc_port, broker.port)
        url = etcd.url(PREFIX)
        push = [
            str(BIN / "edge-cfg"),
            "push",
            str(BUILD / "line1"),
            url,
            "-m",
            "fleet-demo: line 1",
        ]
        print(f"\n$ edge-cfg push build/fleet-demo/line1 {url}", flush=True)
        done = subprocess.run(push, check=False, text=True, capture_output=True)
        print((done.stdout + done.stderr).rstrip(), flush=True)
        if done.returncode != 0:
            return 1
        with etcd.store(PREFIX) as s:
            rev = s.snapshot().config_revision
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            applied = {gw: metric(ports[gw], "cfg_revision_current") for gw in GATEWAYS}
            if all(v == rev for v in applied.values()):
                break
            for name, p in procs:
                if p.poll() is not None:
                    print(
                        f"fleet-demo: {name} exited with {p.returncode}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
        else:
            print(
                f"fleet-demo: not every gateway applied revision {rev}: {applied}",
                file=sys.stderr,
            )
            return 1
        print(
            f"fleet-demo: all three run revision {rev} (cfg_revision_current on each /metrics)"
        )
        time.sleep(
            4
        )  # a status refresh, so the health column has seen the uplink connect
        print(f"\n$ edge-cfg fleet status {etcd.url()}", flush=True)
        status = subprocess.run(
            [str(BIN / "edge-cfg"), "fleet", "status", etcd.url()],
            check=False,
            text=True,
            capture_output=True,
        )
        print((status.stdout + status.stderr).rstrip(), flush=True)
        return status.returncode
    finally:
        for _name, p in reversed(procs):
            stop_pid(p)
        if broker is not None:
            broker.stop()
        etcd.stop()
        print("fleet-demo: every process it started has been stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
