"""rtu+tcp through a serial device server, and Modbus/TCP Security (mutual TLS), with socat as the
real device server / TLS terminator in front of the simulator."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edge_gateway.config.model import TlsFiles
from edge_gateway.drivers.modbus.line import start_line
from edge_gateway.drivers.modbus.model import Endpoint
from edge_gateway.testkit import free_port, require, stop_pid, wait_listening, wait_port

from .conftest import collect, driver, var

PROFILE = {"units": [{"unit": 3, "points": [{"table": "holding", "addr": 4, "type": "float32", "value": 2.5}]}]}


def test_rtu_over_tcp_via_a_serial_device_server(sim_factory, bus, pty_pair) -> None:
    sim_factory(PROFILE, tcp=False, rtu=[pty_pair.b], baud=115200)
    port = free_port()
    server = subprocess.Popen(
        [require("socat"), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"FILE:{pty_pair.a},raw,echo=0"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)  # not wait_port: its probe connection would fork a second reader of the pty
        ep = Endpoint("dsrv", "rtu+tcp", "127.0.0.1", port, timeout=0.5, baud=115200)
        line = start_line(ep, [driver("d", 3, "dsrv")], [var("x", "d", "holding", 4, "float32")], bus)
        try:
            frames = collect(bus, 1, pred=lambda f: f.q == "good")
        finally:
            line.stop()
    finally:
        stop_pid(server)  # type: ignore[arg-type]
    assert frames[0].value == 2.5


def _pki(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl = require("openssl")
    p = {k: d / f"{k}.pem" for k in ("ca", "ca_key", "srv", "srv_key", "cli", "cli_key")}
    run = lambda *a: subprocess.run([openssl, *a], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(p["ca_key"]),
        "-out",
        str(p["ca"]),
    )
    for name, cn, ext in (
        ("srv", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("cli", "edge-01", "extendedKeyUsage=clientAuth"),
    ):
        csr = d / f"{name}.csr"
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(p[f"{name}_key"]),
            "-out",
            str(csr),
        )
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(p["ca"]),
            "-CAkey",
            str(p["ca_key"]),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(extfile),
            "-out",
            str(p[name]),
        )
    return p


def test_modbus_tcp_security_with_mutual_tls(sim_factory, bus, tmp_path: Path) -> None:
    sim = sim_factory(PROFILE)
    pki = _pki(tmp_path)
    port = free_port()
    terminator = subprocess.Popen(
        [
            require("socat"),
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={pki['srv']},key={pki['srv_key']},"
            f"cafile={pki['ca']},verify=1",
            f"TCP:127.0.0.1:{sim.port}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        tls = TlsFiles(str(pki["ca"]), str(pki["cli"]), str(pki["cli_key"]))
        ep = Endpoint("sec", "tls+tcp", "127.0.0.1", port, timeout=1.0, tls=tls)
        line = start_line(ep, [driver("d", 3, "sec")], [var("x", "d", "holding", 4, "float32")], bus)
        try:
            frames = collect(bus, 1, pred=lambda f: f.q == "good")
        finally:
            line.stop()
        # without a client certificate the server refuses the handshake: the line reports it, never crashes
        ep2 = Endpoint("sec2", "tls+tcp", "127.0.0.1", port, timeout=1.0, tls=TlsFiles(str(pki["ca"])))
        line = start_line(ep2, [driver("d2", 3, "sec2")], [var("y", "d2", "holding", 4, "float32")], bus)
        try:
            refused = collect(bus, 1, pred=lambda f: f.tag == "y")
        finally:
            line.stop()
    finally:
        stop_pid(terminator)  # type: ignore[arg-type]
    assert frames[0].value == 2.5
    assert refused and refused[0].q.startswith("bad:")
