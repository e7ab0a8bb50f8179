"""Persistent session across a lost link, username/password (a rotated password file),
and TLS with a client certificate — each against a real Mosquitto configured for it."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from edge_gateway.config.model import Backoff, TlsFiles
from edge_gateway.drivers.mqtt_source.model import MqttEndpoint, MqttTag, Payload
from edge_gateway.testkit import LOOPBACK, Mosquitto, require

from .conftest import Publisher, SourceFactory, collect, driver, endpoint, wait_for

# Started as root, Mosquitto drops to the `mosquitto` user, which cannot read pytest's 0700 tmp
# directories (password file, certificates, persistence db). Keep it as whoever runs the tests.
AS_ME = [f"user {pwd.getpwuid(os.getuid()).pw_name}"]


def tags(did: str) -> list[MqttTag]:
    return [MqttTag("s.{1}", did, "s/+", Payload("number"), "int32")]


class Relay:
    """A TCP relay between the source and the broker whose link can be cut and restored, to lose
    the connection while the broker (and our session in it) stays up."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server((LOOPBACK, 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.server.accept()
            except OSError:
                return  # closed
            if not self.up:
                a.close()
                continue
            b = socket.create_connection((LOOPBACK, self.target))
            with self.lock:
                self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            if self.up:
                raise  # only cutting the relay may break a pipe
        for sock in (src, dst):
            with contextlib.suppress(OSError):  # ENOTCONN: the other pipe shut it down first
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):  # ENOTCONN: the peer closed it already
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_session_resumes_after_a_lost_link_and_queued_messages_arrive(
    mosquitto: Mosquitto, publisher: Publisher, source: SourceFactory
) -> None:
    relay = Relay(mosquitto.port)
    try:
        ep = replace(endpoint(mosquitto, backoff=Backoff(0.05, 0.2), session_expiry=3600), port=relay.port)
        src, bus = source(ep, [driver("sess", [("s/+", 1)])], tags("sess"))
        assert src.status()["session"] == "new"
        relay.cut()
        wait_for(lambda: not src.connected, what="link down")
        for v in range(5):  # the broker queues these for our session while we are away
            publisher.pub("s/a", str(v), qos=1)
        assert bus.drain(10, 0.1) == []
        relay.up = True
        wait_for(lambda: src.connected, what="reconnect")
        assert src.status()["session"] == "resumed"  # subscriptions kept, not sent again
        assert [f.value for f in collect(bus, 5)] == [0, 1, 2, 3, 4]
    finally:
        relay.close()


def test_username_and_a_rotated_password_file(tmp_path: Path, source: SourceFactory) -> None:
    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run([require("mosquitto_passwd"), "-b", "-c", str(pwfile), "gw", "s3cret"], check=True)
    broker = Mosquitto(
        workdir=tmp_path / "mq", extra=[*AS_ME, f"password_file {pwfile}", "allow_anonymous false"]
    ).start()
    secret = tmp_path / "gw.pass"
    secret.write_text("wrong\n")
    try:
        ep = endpoint(broker, username="gw", password_file=str(secret), backoff=Backoff(0.05, 0.2))
        src, bus = source(ep, [driver("auth", [("s/+", 1)])], tags("auth"), connected=False)
        wait_for(lambda: src.last_error is not None and "refused" in src.last_error, what="refusal")
        assert src.health("auth") == "down"
        secret.write_text("s3cret\n")  # read again at the next attempt: no restart needed
        wait_for(lambda: src.connected, what="connect with the new password")
        wait_for(lambda: src.status()["drivers"]["auth"]["subscriptions"][0]["granted"] == 1)
        dev = Publisher(broker.port, auth=("gw", "s3cret"))
        dev.pub("s/x", "7")
        dev.close()
        assert [(f.tag, f.value) for f in collect(bus, 1)] == [("s.x", 7)]
    finally:
        broker.stop()


def _openssl(*args: str) -> None:
    subprocess.run([require("openssl"), *args], check=True, capture_output=True)


def _pki(d: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    (d / "san.ext").write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    for name, cn, ext in (("server", LOOPBACK, ["-extfile", f"{d}/san.ext"]), ("client", "edge-gw", [])):
        _openssl("req", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={cn}")
        _openssl(
            "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-out", f"{d}/{name}.pem", "-days", "2", *ext,
        )  # fmt: skip
    return {k: str(d / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mqtts_with_a_client_certificate(tmp_path: Path, source: SourceFactory) -> None:
    pki = _pki(tmp_path / "pki")
    tls_conf = [
        f"cafile {pki['ca.pem']}",
        f"certfile {pki['server.pem']}",
        f"keyfile {pki['server.key']}",
        "require_certificate true",
    ]
    broker = Mosquitto(workdir=tmp_path / "mq", extra=[*AS_ME, *tls_conf]).start()
    try:
        ep = MqttEndpoint(
            "secure",
            "mqtts",
            LOOPBACK,
            broker.port,
            "gw-tls",
            tls=TlsFiles(pki["ca.pem"], pki["client.pem"], pki["client.key"]),
        )
        src, bus = source(ep, [driver("tls", [("s/+", 1)], endpoint_id="secure")], tags("tls"))
        dev = Publisher(
            broker.port, tls={"ca_certs": pki["ca.pem"], "certfile": pki["client.pem"], "keyfile": pki["client.key"]}
        )
        dev.pub("s/t", "42")
        dev.close()
        assert [(f.tag, f.value) for f in collect(bus, 1)] == [("s.t", 42)]
        assert src.status()["broker"] == f"mqtts://{LOOPBACK}:{broker.port}"
    finally:
        broker.stop()
