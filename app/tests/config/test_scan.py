"""edge-cfg modbus scan against real slaves: tools/plcsim on a socat pty pair (RTU, through
minimalmodbus) and on 127.0.0.1 (Modbus/TCP, through pymodbus), a genuine pymodbus server, and
the refusal to touch a line that another process (a real edge-gateway among them) owns."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.config.cli import main as edge_cfg
from edge_gateway.config.loader import lint, load_snapshot
from edge_gateway.drivers.modbus import scan
from edge_gateway.runtime.control import request
from edge_gateway.testkit import LOOPBACK, PtyPair, free_port, stop_pid, wait_port

from ..drivers_modbus.conftest import Sim

BIN = Path(sys.executable).parent
BAUD = 115200  # the simulator emulates wire time at this baud; a pty itself ignores it
# Units that must be found get 1 s to answer: on a loaded CI machine a 100 ms silence before an answer
# happens (the scan then reports the unit absent or its answer garbled); tests of silence keep 50 ms.

PROFILE: dict[str, Any] = {
    "units": [
        {  # a meter: holding 0-4 and input 0-1 hold data, holding 5-9 are not there (exception 0x02)
            "unit": 1,
            "points": [
                {"table": "holding", "addr": 0, "type": "uint16", "value": 4250},
                {"table": "holding", "addr": 1, "type": "uint16", "value": 7},
                {"table": "input", "addr": 1, "type": "uint16", "value": 350},
                {"table": "coil", "addr": 1, "value": True},
            ],
            "faults": {"exceptions": [{"table": "holding", "from": 5, "to": 9, "code": 2}]},
        },
        {  # a unit behind a TCP-to-RTU gateway that did not answer it: the gateway says 0x0B
            "unit": 2,
            "faults": {"exceptions": [{"from": 0, "to": 65535, "code": 11}]},
        },
        {  # present, but it has no holding register at all: it answers only with exception 0x02
            "unit": 3,
            "points": [{"table": "input", "addr": 0, "type": "uint16", "value": 77}],
            "faults": {"exceptions": [{"table": "holding", "from": 0, "to": 65535, "code": 2}]},
        },
        # unit 4 does not exist: silence
        {  # every answer of unit 5 has a broken CRC (a unit at the wrong parity looks like this)
            "unit": 5,
            "points": [{"table": "holding", "addr": 0, "type": "uint16", "value": 1}],
            "faults": {"bad_crc_every": 1},
        },
    ]
}


@pytest.fixture
def rtu_line(tmp_path: Path) -> Iterator[tuple[PtyPair, Sim]]:
    """plcsim serving RTU on end A of a fresh pty pair; the scan talks to end B."""
    pair = PtyPair(tmp_path / "pty").start()
    sim = Sim(PROFILE, tmp_path, tcp=True, rtu=[pair.a], baud=BAUD).start()
    try:
        yield pair, sim
    finally:
        sim.stop()
        pair.stop()


def run_scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = edge_cfg(["modbus", "scan", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def sections(stdout: str) -> dict[str, Any]:
    """The three files printed to stdout, parsed."""
    parts: dict[str, Any] = {}
    name = None
    chunks: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("# --- ") and line.endswith(" ---"):
            name = line[6:-4]
            chunks[name] = []
        elif name:
            chunks[name].append(line)
    for n, lines in chunks.items():
        parts[n] = yaml.safe_load("\n".join(lines))
    return parts


def test_rtu_scan_finds_the_units_that_answer_and_what_they_expose(
    rtu_line: tuple[PtyPair, Sim], capsys: pytest.CaptureFixture[str]
) -> None:
    pair, _ = rtu_line
    rc, out, err = run_scan(
        capsys,
        *("--serial", pair.b, "--baud", str(BAUD), "--parity", "E", "--stopbits", "1"),
        *("--units", "1-4", "--probe", "holding:0-9,input:0-1,coil:0-1", "--timeout", "1s"),
    )
    assert rc == 0, err
    files = sections(out)
    assert set(files) == {"endpoints.yml", "drivers.yml", "variables.yml"}
    [(ep_id, ep)] = files["endpoints.yml"].items()
    assert ep["scheme"] == "serial" and ep["host"] == os.path.abspath(pair.b)
    assert ep["opts"]["baud"] == BAUD and ep["opts"]["parity"] == "E" and ep["opts"]["stopbits"] == 1
    # 1 answers with data, 3 only with exceptions (present too); 2 (0x0B from a gateway) and 4 (silent) are absent
    drivers = files["drivers.yml"]
    assert {d: c["cfg"]["unit_id"] for d, c in drivers.items()} == {"unit_1": 1, "unit_3": 3}
    assert all(c["endpoint_id"] == ep_id for c in drivers.values())
    tags = {(v["driver_id"], v["address"]["type"], v["address"]["addr"]): v["datatype"] for v in files["variables.yml"]}
    assert tags == {
        **{("unit_1", "holding", a): "uint16" for a in range(5)},  # 5-9 rejected with 0x02: halved away
        ("unit_1", "input", 0): "uint16",
        ("unit_1", "input", 1): "uint16",
        ("unit_1", "coil", 0): "bool",
        ("unit_1", "coil", 1): "bool",
        ("unit_3", "input", 0): "uint16",
        ("unit_3", "input", 1): "uint16",
        ("unit_3", "coil", 0): "bool",
        ("unit_3", "coil", 1): "bool",
    }
    assert "# read 4250 (0x109A)" in out and "# read 350 (0x015E)" in out and "# read true" in out
    assert "holding:5-9: exception 0x02" in out  # what did not read back is said, in one merged range
    assert "unit 3: present (exception 0x02)" in err
    assert "2 of 4 unit(s) answered" in err
    assert "unit 4 (4/4)" not in err  # progress is for a terminal only; stderr here is captured


def test_rtu_scan_out_dir_is_a_configuration_that_lints_clean(
    rtu_line: tuple[PtyPair, Sim], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair, _ = rtu_line
    out = tmp_path / "scanned"
    rc, stdout, err = run_scan(
        capsys,
        *("--serial", pair.b, "--baud", str(BAUD), "--units", "1-4", "--probe", "holding:0-9,input:0-1"),
        *("--timeout", "1s", "--out", str(out)),
    )
    assert rc == 0, err
    assert stdout == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["endpoints.yml", "drivers.yml", "variables.yml", "connector.yml", "gateway.yml"]
    )
    assert lint(out) == []
    assert edge_cfg(["lint", str(out)]) == 0
    snap = load_snapshot(out)
    assert sorted(d.modbus.unit_id for d in snap.plugin_devices.values()) == [1, 3]
    assert {(v.driver_id, v.address.type, v.address.addr) for v in snap.plugin_tags} >= {
        ("unit_1", "holding", 0),
        ("unit_1", "holding", 4),
        ("unit_3", "input", 0),
    }
    capsys.readouterr()
    # a second scan does not overwrite the files without --force
    assert edge_cfg(["modbus", "scan", "--tcp", "127.0.0.1:1", "--units", "1", "--out", str(out)]) == 2


def test_tcp_scan_of_plcsim(rtu_line: tuple[PtyPair, Sim], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, sim = rtu_line
    out = tmp_path / "tcp"
    rc, _, err = run_scan(
        capsys,
        *("--tcp", f"127.0.0.1:{sim.port}", "--units", "1-4", "--probe", "holding:0-9,discrete:0-3"),
        *("--timeout", "1s", "--out", str(out)),
    )
    assert rc == 0, err
    assert lint(out) == []
    snap = load_snapshot(out)
    [ep] = snap.plugin_endpoints.values()
    assert (ep.scheme, ep.host, ep.port) == ("tcp", "127.0.0.1", sim.port)
    assert sorted(d.modbus.unit_id for d in snap.plugin_devices.values()) == [1, 3]
    assert {(v.driver_id, v.address.type, v.address.addr) for v in snap.plugin_tags} == {
        *{("unit_1", "holding", a) for a in range(5)},
        *{("unit_1", "discrete", a) for a in range(4)},
        *{("unit_3", "discrete", a) for a in range(4)},
    }


def test_tcp_scan_of_a_genuine_pymodbus_server(capsys: pytest.CaptureFixture[str]) -> None:
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    hr = ModbusSequentialDataBlock(1, [11, 22, 33])  # address 1 is register 0 in pymodbus' legacy blocks
    ir = ModbusSequentialDataBlock(1, [5])
    ctx = ModbusServerContext(devices={7: ModbusDeviceContext(hr=hr, ir=ir)}, single=False)
    port = free_port()
    loop = asyncio.new_event_loop()
    holder: list[ModbusTcpServer] = []

    async def serve() -> None:
        holder.append(ModbusTcpServer(ctx, address=(LOOPBACK, port)))
        await holder[0].serve_forever()

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    try:
        wait_port(port)
        rc, out, err = run_scan(
            capsys,
            "--tcp",
            f"{LOOPBACK}:{port}",
            "--units",
            "6-8",
            "--probe",
            "holding:0-5,input:0",
            "--timeout",
            "1s",
        )
    finally:
        asyncio.run_coroutine_threadsafe(holder[0].shutdown(), loop).result(5)
        t.join(5)
    assert rc == 0, err
    files = sections(out)
    assert {c["cfg"]["unit_id"] for c in files["drivers.yml"].values()} == {7}
    got = {(v["address"]["type"], v["address"]["addr"]) for v in files["variables.yml"]}
    assert got == {("holding", 0), ("holding", 1), ("holding", 2), ("input", 0)}
    assert "# read 33 (0x0021)" in out


def test_no_unit_answers_exit_1(rtu_line: tuple[PtyPair, Sim], capsys: pytest.CaptureFixture[str]) -> None:
    pair, _ = rtu_line
    rc, out, err = run_scan(capsys, "--serial", pair.b, "--baud", str(BAUD), "--units", "4,6", "--timeout", "50ms")
    assert (rc, out) == (1, "")
    assert "0 of 2 unit(s) answered" in err


def test_a_garbled_answer_is_reported_not_configured(
    rtu_line: tuple[PtyPair, Sim], capsys: pytest.CaptureFixture[str]
) -> None:
    pair, _ = rtu_line
    rc, out, err = run_scan(capsys, "--serial", pair.b, "--baud", str(BAUD), "--units", "1,5", "--timeout", "1s")
    assert rc == 0, err
    assert {c["cfg"]["unit_id"] for c in sections(out)["drivers.yml"].values()} == {1}
    assert "garbled answer (check baud/parity, or two units with one id): unit 5:" in err
    assert "1 of 2 unit(s) answered" in err


def test_long_reads_get_their_wire_time_on_top_of_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """125 registers at 9600 baud are about 300 ms on the wire (the simulator emulates it): a 100 ms
    timeout is for the silence before an answer, not for the whole answer."""
    profile = {"units": [{"unit": 1, "points": [{"table": "holding", "addr": 124, "type": "uint16", "value": 9}]}]}
    with PtyPair(tmp_path / "pty") as pair:
        sim = Sim(profile, tmp_path, tcp=False, rtu=[pair.a], baud=9600).start()
        try:
            rc, out, err = run_scan(
                capsys,
                "--serial",
                pair.b,
                "--baud",
                "9600",
                "--units",
                "1",
                "--probe",
                "holding:0-124",
                "--timeout",
                "100ms",
            )
        finally:
            sim.stop()
    assert rc == 0, err
    tags = sections(out)["variables.yml"]
    assert len(tags) == 125 and tags[-1]["address"] == {"type": "holding", "addr": 124}
    assert "# read 9 (0x0009)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--units", "0-3"], "outside 1-247"),
        (["--units", "1-300"], "outside 1-247"),
        (["--probe", "holdings:0-9"], "not a probe range"),
        (["--probe", "holding:9-1"], "reversed"),
        (["--timeout", "soon"], "not a duration"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_scan(capsys, "--tcp", "127.0.0.1:1", *args)
    assert rc == 2 and message in err


def test_parse_units_and_probes() -> None:
    assert scan.parse_units("1-3,7,2") == [1, 2, 3, 7]
    assert scan.parse_probes("holding:0-9,input:0,holding:5-20,coil:3-4,holding:21,coil:0-1") == [
        scan.Probe("holding", 0, 22),  # overlapping and adjacent ranges merge: no address is configured twice
        scan.Probe("input", 0, 1),
        scan.Probe("coil", 0, 2),
        scan.Probe("coil", 3, 2),
    ]


def test_missing_serial_device_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_scan(capsys, "--serial", str(tmp_path / "ttyNone"), "--units", "1")
    assert rc == 2 and "cannot open" in err


def test_unreachable_tcp_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_scan(capsys, "--tcp", f"127.0.0.1:{free_port()}", "--units", "1")
    assert rc == 2 and "cannot connect" in err


# --- refusing a line someone else owns -----------------------------------------------------------


def hold_port(path: str, exclusive: bool) -> subprocess.Popen[str]:
    """Another process with the port open (pyserial, with or without its flock), until stopped."""
    code = (
        "import serial, sys\n"
        f"s = serial.Serial({path!r}, baudrate=19200, exclusive={exclusive})\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    return proc


def test_refuses_a_port_another_process_has_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with PtyPair(tmp_path / "pty") as pair:
        real = os.path.realpath(pair.b)
        holder = hold_port(pair.b, exclusive=False)  # no lock: only /proc/<pid>/fd tells
        try:
            rc, out, err = run_scan(capsys, "--serial", pair.b, "--units", "1", "--timeout", "50ms")
        finally:
            stop_pid(holder)  # type: ignore[arg-type]
    assert (rc, out) == (3, "")
    assert "refused" in err and f"pid {holder.pid} has {real} open" in err
    assert "close the program that has it open" in err


def test_the_exclusive_lock_refuses_even_without_the_proc_check(tmp_path: Path) -> None:
    """The runtime opens its port with exclusive=True (flock); the scan's own open takes it the same way."""
    with PtyPair(tmp_path / "pty") as pair:
        holder = hold_port(pair.b, exclusive=True)
        try:
            with pytest.raises(scan.Refused, match="exclusive lock"):
                scan.SerialReader(pair.b, 19200, "E", 1, 8, 0.05)
        finally:
            stop_pid(holder)  # type: ignore[arg-type]


def test_pty_allocator_is_not_an_owner(tmp_path: Path) -> None:
    """socat keeps both pty ends open: it is the cable, not a user of the line."""
    with PtyPair(tmp_path / "pty") as pair:
        assert scan.open_by_others(pair.b) == []
        scan.check_line_free(pair.b)


def gateway_config(d: Path, device: str) -> Path:
    d.mkdir()
    (d / "endpoints.yml").write_text(
        f"rs485_scan:\n  scheme: serial\n  host: {device}\n"
        "  opts: { baud: 19200, parity: E, timeout: 100ms, rs485: none }\n"
    )
    (d / "drivers.yml").write_text(
        "meter:\n  kind: static\n  endpoint_id: rs485_scan\n  proto: modbus\n  cfg: { unit_id: 1, polling: 200ms }\n"
    )
    (d / "variables.yml").write_text(
        "- tag: meter.h0\n  driver_id: meter\n  address: { type: holding, addr: 0 }\n  datatype: uint16\n"
    )
    (d / "connector.yml").write_text(
        f"up:\n  kind: mqtt5\n  endpoint: tcp://127.0.0.1:{free_port()}\n  tenant: t\n  device: d\n"
    )
    (d / "gateway.yml").write_text(
        f"wal: {{ dir: {d / 'wal'} }}\ncontrol: {{ socket: {d / 'control.sock'} }}\n"
        f"metrics: {{ listen: 127.0.0.1:{free_port()} }}\n"
    )
    assert [p for p in lint(d) if p.severity == "error"] == []
    return d


def test_refuses_the_line_of_a_running_gateway(tmp_path: Path) -> None:
    """A real edge-gateway polls end A; scanning end A is refused (exit 3), naming the gateway and its endpoint."""
    pair = PtyPair(tmp_path / "pty").start()
    sim = Sim(PROFILE, tmp_path, tcp=False, rtu=[pair.b], baud=19200).start()
    cfg = gateway_config(tmp_path / "cfg", pair.a)
    real = os.path.realpath(pair.a)
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - the child writes it
    gw = subprocess.Popen([str(BIN / "edge-gateway"), "run", "--config", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not any(h.pid == gw.pid for h in scan.open_by_others(pair.a)):
            assert gw.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not open its line"
            time.sleep(0.05)
        request(str(cfg / "control.sock"), "status", 5.0)  # it is up and serving
        done = subprocess.run(
            [str(BIN / "edge-cfg"), "modbus", "scan", "--serial", pair.a, "--units", "1-2", "--timeout", "50ms"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gw.poll() is None  # the scan did not disturb it
    finally:
        stop_pid(gw)  # type: ignore[arg-type]
        log.close()
        sim.stop()
        pair.stop()
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert f"pid {gw.pid} is an edge-gateway with {real} configured as endpoint rs485_scan" in done.stderr
    assert "stop the gateway (e.g. `systemctl stop edge-gateway`)" in done.stderr


def test_progress_on_a_terminal(rtu_line: tuple[PtyPair, Sim]) -> None:
    """With stderr on a terminal the scan says which unit it is at (unit N (i/total))."""
    pair, _ = rtu_line
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [str(BIN / "edge-cfg"), "modbus", "scan", "--serial", pair.b, "--baud", str(BAUD)]
            + ["--units", "1-3", "--probe", "holding:0", "--timeout", "1s"],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=60)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    text = seen.decode()
    assert "unit 1 (1/3)" in text and "unit 3 (3/3), 1 found" in text
    assert "2 of 3 unit(s) answered" in text
    assert "unit_1:" in out
