"""The OPC UA worker against the real plcsim server: datatypes, polling, subscriptions, quality,
writes, refusals, a server restart."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_gateway.core.driver import Refused
from edge_gateway.drivers.opcua.config import parse_node
from edge_gateway.drivers.opcua.worker import OpcuaWorker

from .conftest import NS_URI, Bus, OpcuaSim, device, endpoint, tag

EXPECTED = {
    "Bool": ("bool", True),
    "Int16": ("int16", -1234),
    "UInt16": ("uint16", 54321),
    "Int32": ("int32", -123456789),
    "UInt32": ("uint32", 3_000_000_000),
    "Int64": ("int64", -(2**40)),
    "UInt64": ("uint64", 2**60),
    "Float": ("float", 1.5),
    "Double": ("double", 2.718281828),
    "String": ("string", "hello plant"),
    "Bytes": ("binary", b"\x00\xffraw"),
    "DateTime": ("datetime", int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)),
}


@pytest.fixture
def run() -> Iterator[list[OpcuaWorker]]:
    workers: list[OpcuaWorker] = []
    yield workers
    for w in workers:
        w.stop()
        assert not w.is_alive()


def _start(workers: list[OpcuaWorker], sim: OpcuaSim, tags: list, **cfg: object) -> tuple[OpcuaWorker, Bus]:
    bus = Bus()
    w = OpcuaWorker(endpoint(sim.port), [device(**cfg)], tags, bus)
    w.start()
    workers.append(w)
    return w, bus


def test_node_id_forms_parse() -> None:
    assert parse_node("ns=2;s=Temp").ident == "Temp" and parse_node("ns=2;s=Temp").ns == 2
    assert parse_node("i=2258").ident == 2258 and parse_node("i=2258").ns == 0
    assert parse_node("nsu=urn:x:y;s=A").nsu == "urn:x:y"
    assert parse_node("ns=1;b=" + base64.b64encode(b"ab").decode()).ident == b"ab"
    assert parse_node("ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63").kind == "g"
    for bad in ("Temp", "ns=x;s=A", "i=abc", "ns=1;g=nope", "ns=1;b=***"):
        with pytest.raises(ValueError):
            parse_node(bad)


def test_every_datatype_arrives_by_polling(sim: OpcuaSim, run: list[OpcuaWorker]) -> None:
    tags = [tag(f"p.{n}", f"ns={sim.ns};s={n}", dt) for n, (dt, _) in EXPECTED.items()]
    tags += [
        tag("p.numeric", f"nsu={NS_URI};i=1001", "int32"),
        tag("p.guid", f"ns={sim.ns};g=72962b91-fa75-4ae6-8d28-b404dc7daf63", "int32"),
        tag("p.opaque", f"nsu={NS_URI};b=" + base64.b64encode(b"\x01\x02opc").decode(), "int32"),
    ]
    _, bus = _start(run, sim, tags, polling=100, max_nodes_per_read=4)
    assert bus.wait(lambda b: all(b.of(t.tag) for t in tags)), bus.frames
    for n, (_, want) in EXPECTED.items():
        f = bus.of(f"p.{n}")[0]
        assert f.q == "good", (n, f)
        assert f.value == want and type(f.value) is type(want), (n, f.value)
    assert [bus.of(t)[0].value for t in ("p.numeric", "p.guid", "p.opaque")] == [7, 4, 6]


def test_bad_status_is_a_quality_and_subscriptions_deliver_changes(sim: OpcuaSim, run: list[OpcuaWorker]) -> None:
    temp, faulty = f"ns={sim.ns};s=Temp", f"ns={sim.ns};s=Faulty"
    tags = [
        tag("s.temp", temp, "double"),
        tag("s.faulty", faulty, "double"),
        tag("p.counter", f"ns={sim.ns};s=Counter", "uint32"),
    ]
    w, bus = _start(
        run, sim, tags, subscriptions=[{"node": temp, "sample": 50}, {"node": faulty}], publishing_interval=50
    )
    assert bus.wait(lambda b: len({f.value for f in b.of("s.temp")}) >= 3), bus.frames
    assert bus.wait(lambda b: {f.q for f in b.of("s.faulty")} >= {"good", "bad:BadSensorFailure"})
    assert all(f.value is None for f in bus.of("s.faulty") if f.q != "good")
    assert bus.wait(lambda b: len(b.of("p.counter")) >= 2)
    st = w.session_status()
    assert st["subscribed"] == 2 and st["notifications"] > 0 and st["reads"] > 0


def test_writes_with_the_node_type_and_refusals(sim: OpcuaSim, run: list[OpcuaWorker]) -> None:
    tags = [
        tag("w.sp", f"ns={sim.ns};s=Setpoint", "double", "RW"),
        tag("w.spi", f"ns={sim.ns};s=SetpointInt", "int32", "RW"),
        tag("w.mode", f"ns={sim.ns};s=Mode", "string", "RW"),
        tag("w.locked", f"ns={sim.ns};s=Locked", "double", "RW"),
    ]
    w, bus = _start(run, sim, tags, polling=100, enable_write=True)
    assert bus.wait(lambda b: all(b.of(t.tag) for t in tags))
    w.write(tags[0], 42).result(10)  # an int for a Double node: written as Double
    w.write(tags[1], -5).result(10)
    w.write(tags[2], "manual").result(10)
    assert bus.wait(lambda b: any(f.value == 42.0 and type(f.value) is float for f in b.of("w.sp")))
    assert bus.wait(lambda b: any(f.value == -5 for f in b.of("w.spi")))
    assert bus.wait(lambda b: any(f.value == "manual" for f in b.of("w.mode")))
    with pytest.raises(Refused) as e:
        w.write(tags[3], 2.0)  # AccessLevel: read-only
    assert e.value.reason == "read_only"
    for value in ("x", True, 2**40):
        with pytest.raises(Refused):
            w.write(tags[1], value)
    assert w.session_status()["writes"] == 3  # the refused ones never reached the server
    assert all(f.value == 1.0 for f in bus.of("w.locked"))


def test_server_restart_marks_disconnected_once_and_subscriptions_come_back(run: list[OpcuaWorker]) -> None:
    sim = OpcuaSim().start()
    try:
        temp = f"ns={sim.ns};s=Temp"
        tags = [tag("r.temp", temp, "double"), tag("r.counter", f"ns={sim.ns};s=Counter", "uint32")]
        w, bus = _start(run, sim, tags, subscriptions=[{"node": temp}], publishing_interval=50, polling=100)
        assert bus.wait(lambda b: b.of("r.temp") and b.of("r.counter"))
        sim.stop()
        assert bus.wait(lambda b: all(any(f.q == "bad:disconnected" for f in b.of(t)) for t in ("r.temp", "r.counter")))
        sim.start()  # same port, a fresh server: its Counter starts again from 0
        n = len(bus.frames)
        assert bus.wait(lambda b: any(f.q == "good" for f in b.frames[n:] if f.tag == "r.temp"), 60), w.session_status()
        assert bus.wait(lambda b: any(f.q == "good" for f in b.frames[n:] if f.tag == "r.counter"), 30)
        for t in ("r.temp", "r.counter"):
            assert sum(1 for f in bus.of(t) if f.q == "bad:disconnected") == 1
        assert w.session_status()["connects"] == 2
    finally:
        sim.stop()


def test_slow_answers_and_a_stopped_listener_are_bad_quality_then_recovered(run: list[OpcuaWorker]) -> None:
    """The simulator's fault injection: answers slower than the endpoint's `timeout` (1 s) are a lost
    session (every tag `bad:disconnected` once, the worker alive, backing off), and so is a listener that
    stops; once the server answers in time again the worker reconnects and the values are good."""
    sim = OpcuaSim().start()
    try:
        tags = [tag("s.counter", f"ns={sim.ns};s=Counter", "uint32")]
        bus = Bus()
        w = OpcuaWorker(endpoint(sim.port, timeout=1), [device(polling=100)], tags, bus)
        w.start()
        run.append(w)
        assert bus.wait(lambda b: any(f.q == "good" for f in b.of("s.counter"))), w.session_status()
        sim.op(op="slow", ms=3000)
        assert bus.wait(lambda b: any(f.q == "bad:disconnected" for f in b.of("s.counter"))), w.session_status()
        assert bus.wait(lambda b: w.session_status()["attempts"] >= 2, 30), w.session_status()  # it retried
        assert w.is_alive() and "Timeout" in w.session_status()["last_error"], w.session_status()
        assert sum(f.q == "bad:disconnected" for f in bus.of("s.counter")) == 1
        sim.op(op="slow", ms=0)
        n = len(bus.frames)
        assert bus.wait(lambda b: any(f.q == "good" for f in b.frames[n:]), 60), w.session_status()

        sim.op(op="stop")  # the listener and its sessions close; the process and its values stay
        m = len(bus.frames)
        assert bus.wait(lambda b: any(f.q == "bad:disconnected" for f in b.frames[m:]), 30), w.session_status()
        sim.op(op="start")
        k = len(bus.frames)
        assert bus.wait(lambda b: any(f.q == "good" for f in b.frames[k:]), 60), w.session_status()
        assert w.session_status()["disconnects"] == 2 and w.is_alive()
    finally:
        sim.stop()


def _accepted_and_refused(
    run: list[OpcuaWorker], sim: OpcuaSim, ok: dict[str, object], refused: dict[str, object], error: str
) -> None:
    """Two workers on one server, endpoint opts `ok` and `refused`: the first reads good values; the
    second gets one clear last_error (containing `error`), lives on, backs off (a handful of attempts,
    no retry storm) and marks its tags `bad:disconnected` once, however many attempts it makes."""
    tags = [tag("x.count", f"ns={sim.ns};s=Counter", "uint32")]
    workers = []
    for opts in (ok, refused):
        bus = Bus()
        w = OpcuaWorker(endpoint(sim.port, **opts), [device(polling=100)], tags, bus)
        w.start()
        run.append(w)
        workers.append((w, bus))
    (w, bus), (bad_w, bad_bus) = workers
    assert bus.wait(lambda b: any(f.q == "good" for f in b.of("x.count"))), w.session_status()
    assert bad_bus.wait(lambda b: error in bad_w.session_status()["last_error"]), bad_w.session_status()["last_error"]
    time.sleep(3)  # room for a retry storm, if there were one
    st = bad_w.session_status()
    assert bad_w.is_alive() and st["state"] in ("connecting", "reconnecting") and st["connects"] == 0, st
    assert st["attempts"] <= 5, st  # backoff 0.5 s·2ⁿ: a handful of attempts in these seconds
    assert [f.q for f in bad_bus.of("x.count")] == ["bad:disconnected"]


def test_username_and_password(tmp_path: Path, run: list[OpcuaWorker]) -> None:
    sim = OpcuaSim(user="operator:s3cret").start()
    try:
        good, wrong = tmp_path / "good", tmp_path / "wrong"
        good.write_text("s3cret\n")
        wrong.write_text("guess\n")
        _accepted_and_refused(
            run,
            sim,
            {"username": "operator", "password_file": str(good)},
            {"username": "operator", "password_file": str(wrong)},
            "BadUserAccessDenied",
        )
    finally:
        sim.stop()


def _client_cert(d: Path, name: str = "client") -> tuple[Path, Path]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key, cert = d / f"{name}.pem", d / f"{name}.der"
    asyncio.run(
        setup_self_signed_certificate(
            key, cert, "urn:freeopcua:client", "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": name}
        )
    )
    return cert, key


def _secure(d: Path) -> dict[str, object]:
    cert, key = _client_cert(d)
    return {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
            "certificate": str(cert), "private_key": str(key)}  # fmt: skip


def test_basic256sha256_sign_and_encrypt(tmp_path: Path, run: list[OpcuaWorker]) -> None:
    """`server_certificate` naming a file: the session is encrypted to it; a server whose certificate is
    another one is refused."""
    sim = OpcuaSim(cert_dir=tmp_path).start()
    try:
        secure = _secure(tmp_path)
        other, _ = _client_cert(tmp_path, "stranger")  # not the server's certificate
        _accepted_and_refused(
            run,
            sim,
            {"server_certificate": str(tmp_path / "server.der"), **secure},
            {"server_certificate": str(other), **secure},
            "CertificateMismatch: the server's certificate is not server_certificate",
        )
    finally:
        sim.stop()


def test_a_trust_directory_accepts_its_server_and_refuses_others(tmp_path: Path, run: list[OpcuaWorker]) -> None:
    """`server_certificate` naming a directory: the server's certificate must be in it (or be issued by one
    in it); otherwise one clear last_error (BadCertificateUntrusted), the worker lives and backs off."""
    sim = OpcuaSim(cert_dir=tmp_path).start()
    try:
        trusted, untrusted = tmp_path / "trusted", tmp_path / "untrusted"
        trusted.mkdir()
        untrusted.mkdir()
        (trusted / "plcsim.der").write_bytes((tmp_path / "server.der").read_bytes())
        _client_cert(untrusted, "stranger")  # a certificate, but not the server's
        (untrusted / "notes.txt").write_text("not a certificate, not read\n")
        secure = _secure(tmp_path)
        _accepted_and_refused(
            run,
            sim,
            {"server_certificate": str(trusted), **secure},
            {"server_certificate": str(untrusted), **secure},
            "BadCertificateUntrusted",
        )
    finally:
        sim.stop()
