"""`edge-ctl` as a new user meets it (issue 20), against the real gateway process, simulator and Mosquitto:
a broken configuration does not hide the gateway, status tells degraded from healthy and why, ages and
sizes instead of epoch ms and byte counts, reconnect says what happens, --help lists the exit codes,
colour only on a terminal, and a failed reload names the address and the gateway.yml line."""

from __future__ import annotations

import json
import os
import pty
import re
import selectors
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from edge_gateway.config.model import GatewayCfg
from edge_gateway.runtime import ctl
from edge_gateway.runtime.gwfile import DEFAULT_SOCKET, control_socket
from edge_gateway.testkit import LOOPBACK, free_port, stop_pid

from .plant import BIN, Plant

ANSI = "\x1b["
EDGE_CTL = str(BIN / "edge-ctl")


def run_ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    penv = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return subprocess.run([EDGE_CTL, *args], capture_output=True, text=True, timeout=90, env={**penv, **(env or {})})


def run_ctl_on_tty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """edge-ctl with its stdout on a pseudo-terminal, as in an operator's shell."""
    master, slave = pty.openpty()
    penv = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [EDGE_CTL, *args], stdout=slave, stderr=subprocess.DEVNULL, env={**penv, "TERM": "xterm", **(env or {})}
    )
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        rc = proc.wait(60)
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
        os.close(master)
    return rc, out.decode()


def wait_status(plant: Plant, what: str, pred: Any, timeout: float = 45.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = plant.ctl("status")
        if pred(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(st.get('health'))}\n{plant.log_tail()}")


def tail_lines(args: list[str], n: int, timeout: float = 30.0) -> list[str]:
    """The first n lines `edge-ctl tail` prints; the process is then ended by its PID."""
    proc = subprocess.Popen([EDGE_CTL, *args, "tail"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    got = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while got.count(b"\n") < n and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                got += chunk
    finally:
        sel.close()
        stop_pid(proc)
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    lines = got.decode().splitlines()
    assert len(lines) >= n, (lines, err)
    return lines[:n]


def metrics_listen_line(cfg: Path) -> int:
    lines = (cfg / "gateway.yml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith("listen:"))


# -- without a gateway ------------------------------------------------------------------------------------


def test_help_explains_timeout_and_every_exit_code() -> None:
    top = run_ctl("--help")
    assert top.returncode == 0
    assert "--timeout SECONDS" in top.stdout and "how long to wait for the gateway's answer" in top.stdout
    assert "--color" in top.stdout and "NO_COLOR" in top.stdout
    codes = top.stdout[top.stdout.index("exit codes:") :]
    for code in ("0  done", "1  the gateway answered but refused", "2  no gateway answers"):
        assert code in codes, top.stdout
    for cmd in ("status", "tail", "reload"):
        sub = run_ctl(cmd, "--help")
        assert sub.returncode == 0 and "exit codes:" in sub.stdout, sub.stdout


def test_socket_is_read_from_gateway_yml_alone_and_tolerantly(tmp_path: Path) -> None:
    assert DEFAULT_SOCKET == GatewayCfg.control_socket
    d = tmp_path / "cfg"
    d.mkdir()
    assert control_socket(d) == (DEFAULT_SOCKET, None)  # no gateway.yml: the gateway's default too
    (d / "gateway.yml").write_text("bus: { capacity: lots }\ncontrol:\n  socket: ../run/ctl.sock\n")
    (d / "variables.yml").write_text("- tag: [unclosed\n")  # the rest of the directory is never read
    assert control_socket(d) == (str((tmp_path / "run" / "ctl.sock").resolve()), None)
    (d / "gateway.yml").write_text("control:\n  socket: [\n")
    path, note = control_socket(d)
    assert path == DEFAULT_SOCKET and note and "gateway.yml:" in note and DEFAULT_SOCKET in note
    # and edge-ctl says so, then tries the default: no gateway there is exit 2, naming the path
    out = run_ctl("--config", str(d), "status")
    assert out.returncode == 2, out
    assert "not YAML" in out.stderr and f"no gateway on {DEFAULT_SOCKET}" in out.stderr


def test_units_for_people() -> None:
    assert ctl.duration(3.24) == "3.2 s"
    assert ctl.duration(150) == "2 min"
    assert ctl.duration(3725) == "1h 02m"
    assert ctl.duration(3 * 86400 + 4 * 3600 + 5) == "3d 04h"
    assert ctl.uptime(3725) == "1h 02m" and ctl.uptime(725) == "12m 05s" and ctl.uptime(9.7) == "9s"
    assert ctl.ago(1_000_000, 1_003_200) == "3.2 s ago" and ctl.ago(0, 5) == "never"
    assert ctl.size(512) == "512 B" and ctl.size(12_595) == "12.3 KiB" and ctl.size(5 << 20) == "5.0 MiB"
    assert ctl.size(3 << 30) == "3.0 GiB"


# -- against the real gateway ---------------------------------------------------------------------------------


def test_status_of_a_healthy_plant_for_people_and_as_json(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    st = wait_status(plant, "healthy", lambda s: s["health"]["state"] == "healthy")
    assert st["health"]["reasons"] == [] and st["liveness"]["ok"]
    lines = {ep: line["state"] for ep, line in st["lines"].items()}
    assert lines == {"plc_tcp": "up", "rs485_0": "up", "plant_ua": "up", "plc_s7": "up"}
    assert isinstance(st["wal"]["bytes"], int) and isinstance(st["time_ms"], int)  # --json keeps raw numbers

    # piped: plain text, ages, uptime and sizes, aligned columns
    human = run_ctl("--config", str(plant.cfg), "status")
    assert human.returncode == 0, human.stderr
    out = human.stdout
    assert ANSI not in out
    assert "health   healthy" in out and "liveness ok" in out
    assert re.search(r"pid \d+  up \d+(s|m \d\ds)\n", out), out
    plc = re.search(r"^  plc_tcp +tcp +127\.0\.0\.1:\d+ +up$", out, re.M)
    rs485 = re.search(r"^  rs485_0 +serial +\S+ +up$", out, re.M)
    assert plc and rs485, out
    assert plc.group().index(" tcp") == rs485.group().index(" serial")  # one column across both lines
    assert re.search(r"last good read \d+\.\d s ago", out) and "_ms" not in out, out
    assert re.search(r"wal +\d+(\.\d)? (B|KiB|MiB) in 1 segment", out), out
    assert re.search(r"uplink +mqtt_cloud connected for \d", out), out
    # on a terminal it is coloured, unless NO_COLOR; --color always forces it through a pipe
    rc, on_tty = run_ctl_on_tty("--socket", plant.control, "status")
    assert rc == 0 and ANSI in on_tty and "healthy" in on_tty
    rc, no_color = run_ctl_on_tty("--socket", plant.control, "status", env={"NO_COLOR": "1"})
    assert rc == 0 and ANSI not in no_color and "health   healthy" in no_color
    assert ANSI in run_ctl("--socket", plant.control, "--color", "always", "status").stdout


def test_a_broken_config_does_not_hide_the_gateway(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    plant.edit("variables.yml", ("driver_id: meter2", "driver_id: meter9"))  # a typo: the directory is invalid
    still = run_ctl("--config", str(plant.cfg), "status")
    assert still.returncode == 0 and "health" in still.stdout, still
    # tail: plain through a pipe, coloured when forced
    plain = tail_lines(["--config", str(plant.cfg)], 3)
    assert all(ANSI not in line and re.match(r" *\d+  \d\d:\d\d:\d\d\.\d{3}  \S+", line) for line in plain), plain
    coloured = tail_lines(["--config", str(plant.cfg), "--color", "always"], 3)
    assert all(ANSI in line for line in coloured), coloured
    # reload reaches the gateway, which refuses the configuration: exit 1, the problems printed
    refused = run_ctl("--config", str(plant.cfg), "reload")
    assert refused.returncode == 1, refused
    assert refused.stdout.startswith("invalid configuration, the running one is kept:"), refused.stdout
    assert "variables.yml:" in refused.stdout and "meter9" in refused.stdout
    as_json = run_ctl("--config", str(plant.cfg), "--json", "reload")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["result"] == "invalid"


def test_reconnect_says_what_happens_next(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    again = run_ctl("--socket", plant.control, "connector", "mqtt", "reconnect")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("reconnect requested: mqtt_cloud") and "True" not in again.stdout
    assert "in-flight batches finish" in again.stdout and "edge-ctl connector mqtt stats" in again.stdout
    unknown = run_ctl("--socket", plant.control, "connector", "nosuch", "reconnect")
    assert unknown.returncode == 1 and "unknown connector 'nosuch'" in unknown.stderr
    stats = run_ctl("--socket", plant.control, "connector", "mqtt", "stats")
    assert stats.returncode == 0 and re.search(r"out_bytes +: \d+(\.\d)? (B|KiB) \(\d+ bytes\)", stats.stdout)


def test_a_failed_reload_names_the_address_and_the_gateway_yml_line(plant: Plant) -> None:
    plant.start_gateway()
    plant.wait_ready()
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        plant.edit("gateway.yml", (f"127.0.0.1:{plant.metrics_port}", f"127.0.0.1:{port}"))
        failed = run_ctl("--config", str(plant.cfg), "reload")
    assert failed.returncode == 1, failed
    at = f"{plant.cfg / 'gateway.yml'}:{metrics_listen_line(plant.cfg)} metrics.listen"
    assert f"cannot serve /metrics on 127.0.0.1:{port} ({at})" in failed.stdout, failed.stdout
    assert "rolled back" in failed.stdout and "Address already in use" in failed.stdout
    assert plant.metric("cfg_rollback_total") >= 1  # still served on the old port

    # a second gateway on the same directory cannot start, and says which socket and which setting
    second = subprocess.run(
        [str(BIN / "edge-gateway"), "run", "--config", str(plant.cfg)], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1, second
    lines = (plant.cfg / "gateway.yml").read_text().splitlines()
    n = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("socket:"))
    at = f"{plant.cfg / 'gateway.yml'}:{n} control.socket"
    assert f"cannot bind the control socket {plant.control} ({at}): another gateway is serving" in second.stdout


def test_no_broker_and_devices_in_fault_is_degraded_not_healthy(plant: Plant) -> None:
    plant.broker.stop()
    plant.sim.stop()  # the Modbus/TCP PLC refuses connections, the RS-485 meters never answer
    plant.ua.stop()  # nothing answers on the OPC UA and S7 endpoints either
    plant.s7.stop()
    plant.start_gateway()
    plant.wait_ready()

    def broken(s: dict[str, Any]) -> bool:
        lines = s["lines"]
        modbus = {d: e["state"] for ep in ("plc_tcp", "rs485_0") for d, e in lines[ep]["drivers"].items()}
        return (
            lines["plc_tcp"]["state"] == "down"
            and modbus == dict.fromkeys(modbus, "fault")
            and lines["plant_ua"]["drivers"]["ua1"]["state"] in ("connecting", "reconnecting")
            and lines["plc_s7"]["drivers"]["s7plc"]["state"] == "down"
        )

    st = wait_status(plant, "every device in Fault", broken)
    health = st["health"]
    assert health["state"] == "degraded" and st["liveness"]["ok"], health  # threads alive: the watchdog is fed
    reasons = "\n".join(health["reasons"])
    assert "line plc_tcp" in reasons and "is down" in reasons and "(in Fault: plc1)" in reasons, reasons
    assert "driver meter1 on rs485_0 in Fault" in reasons and "driver meter2 on rs485_0 in Fault" in reasons
    assert re.search(r"driver ua1 on plant_ua \(127\.0\.0\.1:\d+\) is (re)?connecting", reasons), reasons
    assert re.search(r"driver s7plc on plc_s7 \(127\.0\.0\.1:\d+\) is down: \S", reasons), reasons
    assert "uplink mqtt_cloud is not connected" in reasons, reasons
    assert st["lines"]["rs485_0"]["state"] == "up"  # the serial port is open; the devices behind it are not

    out = run_ctl("--socket", plant.control, "status").stdout
    assert "health   degraded" in out and "healthy" not in out, out
    assert re.search(r"^         - uplink mqtt_cloud is not connected", out, re.M), out
    assert re.search(r"^  plc_tcp +tcp +127\.0\.0\.1:\d+ +down$", out, re.M), out
    assert re.search(r"^    meter1 +fault +\d+ failed cycle", out, re.M), out
    assert re.search(r"uplink +mqtt_cloud (down|connecting) ", out), out  # between attempts, or in one


def test_a_paused_bus_is_degraded_and_a_hung_wal_writer_is_failing(plant: Plant) -> None:
    plant.edit("gateway.yml", ("capacity: 65536", "capacity: 64"))
    plant.start_gateway(env={"EDGE_GATEWAY_TEST_HOOKS": "1"})
    plant.wait_ready()
    wait_status(plant, "healthy", lambda s: s["health"]["state"] == "healthy")
    plant.ctl("test.stall_wal", seconds=16)  # the disk hangs: the bus fills, then the watchdog gives up

    paused = wait_status(plant, "the bus paused", lambda s: s["bus"]["paused"])
    assert any(r.startswith("bus paused at ") for r in paused["health"]["reasons"]), paused["health"]
    assert paused["health"]["state"] in ("degraded", "failing")
    failing = wait_status(plant, "failing", lambda s: s["health"]["state"] == "failing", timeout=30)
    assert not failing["liveness"]["ok"]
    assert "not alive: worker wal hung" in failing["health"]["reasons"][0], failing["health"]
    out = run_ctl("--socket", plant.control, "status").stdout
    assert "health   failing" in out and "liveness FAILING: worker wal hung" in out, out
    wait_status(plant, "recovered", lambda s: s["liveness"]["ok"] and not s["bus"]["paused"], timeout=45)


def test_a_second_gateway_on_the_same_wal_says_why_in_one_line(plant: Plant, tmp_path: Path) -> None:
    """Its own control socket and metrics port, the running one's WAL: one clear line, no traceback, no
    "WAL committed through seq None" (issue 20 item 4)."""
    plant.start_gateway()
    plant.wait_ready()
    other = tmp_path / "other"
    shutil.copytree(plant.cfg, other)
    gw = other / "gateway.yml"
    text = gw.read_text()
    text = re.sub(r"socket: .*", f"socket: {tmp_path / 'other.sock'}", text)
    text = text.replace(f"127.0.0.1:{plant.metrics_port}", f"127.0.0.1:{free_port()}")
    gw.write_text(text)  # wal.dir is absolute in the plant: the copy names the same WAL
    second = subprocess.run(
        [str(BIN / "edge-gateway"), "run", "--config", str(other), "--log-format", "text"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second
    out = (second.stdout + second.stderr).strip().splitlines()
    assert "Traceback" not in second.stdout + second.stderr, out
    assert [x for x in out if "cannot start" in x] and all("seq None" not in x for x in out), out
    assert any(f"WAL {plant.tmp / 'wal'} is in use by another process (pid {plant.gw.pid})" in x for x in out), out
    assert len(out) <= 2, out  # the reason, and at most the line saying which config was loaded
