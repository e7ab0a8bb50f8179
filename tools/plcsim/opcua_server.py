#!/usr/bin/env python3
"""A small OPC UA plant model on asyncua's Server, for tests and the demo.

Namespace `urn:edge-gateway:plcsim` (its index is printed), object `Plant` with one node of every
datatype (string NodeIds `ns=<idx>;s=<Name>`), values that change every `--period` seconds, writable
setpoints, a read-only node, a node whose status goes Bad (`Faulty`: BadSensorFailure on odd ticks),
and one node of each other NodeId form (i=, g=, b=). Prints `READY <port> <ns>` when it listens
(`READY <port> <ns> control=<port>` with `--control`); stops on SIGTERM.

Fault injection, on a JSON-lines control socket (`--control PORT`, 127.0.0.1; 0 = a free port):
    {"op": "slow", "ms": 500}       delay every answer of the server by 500 ms (0: back to normal)
    {"op": "stop"} / {"op": "start"}   close the listener and every session / listen again (the
                                        address space and its values stay)
    {"op": "stats"}                 {"requests": N, "listening": true, "slow_ms": 0}
`--slow MS` starts slow. A process restart (SIGTERM, start again) is the other fault.

`--bench N` adds N Double nodes `ns=<idx>;s=Bench.<i>` (i = 0..N-1) that all change every
`--bench-period` seconds, each written with its SourceTimestamp = the moment of the change, so a
subscriber measures the latency from the change to its arrival (tools/bench/bench_opcua.py).

    python tools/plcsim/opcua_server.py --port 4840 [--control 0] [--bench 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from datetime import UTC, datetime

from asyncua import Server, ua
from asyncua.server.uaprocessor import UaProcessor

NS_URI = "urn:edge-gateway:plcsim"
GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")
BYTES = b"\x01\x02opc"

# name → (variant type, initial value, writable)
NODES: dict[str, tuple[ua.VariantType, object, bool]] = {
    "Bool": (ua.VariantType.Boolean, True, False),
    "Int16": (ua.VariantType.Int16, -1234, False),
    "UInt16": (ua.VariantType.UInt16, 54321, False),
    "Int32": (ua.VariantType.Int32, -123456789, False),
    "UInt32": (ua.VariantType.UInt32, 3_000_000_000, False),
    "Int64": (ua.VariantType.Int64, -(2**40), False),
    "UInt64": (ua.VariantType.UInt64, 2**60, False),
    "Float": (ua.VariantType.Float, 1.5, False),
    "Double": (ua.VariantType.Double, 2.718281828, False),
    "String": (ua.VariantType.String, "hello plant", False),
    "Bytes": (ua.VariantType.ByteString, b"\x00\xffraw", False),
    "DateTime": (
        ua.VariantType.DateTime,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        False,
    ),
    "Temp": (ua.VariantType.Double, 20.0, False),  # changes every tick
    "Counter": (ua.VariantType.UInt32, 0, False),  # +1 every tick
    "Setpoint": (ua.VariantType.Double, 50.0, True),
    "SetpointInt": (ua.VariantType.Int32, 7, True),
    "Mode": (ua.VariantType.String, "auto", True),
    "Enable": (ua.VariantType.Boolean, False, True),
    "Locked": (ua.VariantType.Double, 1.0, False),  # AccessLevel read-only
    "Faulty": (ua.VariantType.Double, 0.0, False),  # Bad on odd ticks
}


class Faults:
    """The injected faults: a delay before every answer (a patch of asyncua's UaProcessor.process, the
    one place every request of every session passes), and the listener's stop/start."""

    def __init__(self, server: Server, slow_ms: float = 0.0) -> None:
        self.server = server
        self.slow = slow_ms / 1000
        self.requests = 0
        self.listening = True
        process = UaProcessor.process
        faults = self

        async def slow_process(
            self: UaProcessor, header: object, body: object
        ) -> object:
            faults.requests += 1
            if faults.slow:
                await asyncio.sleep(faults.slow)
            return await process(self, header, body)

        UaProcessor.process = slow_process  # type: ignore[method-assign]

    async def op(self, m: dict[str, object]) -> dict[str, object]:
        op = m.get("op")
        if op == "slow":
            self.slow = float(m.get("ms", 0)) / 1000  # type: ignore[arg-type]
            return {"ok": True}
        if op == "stop":
            if self.listening:
                self.listening = False
                await self.server.bserver.stop()  # type: ignore[union-attr]
            return {"ok": True}
        if op == "start":
            if not self.listening:
                await self.server.bserver.start()  # type: ignore[union-attr]
                self.listening = True
            return {"ok": True}
        if op == "stats":
            return {
                "requests": self.requests,
                "listening": self.listening,
                "slow_ms": self.slow * 1000,
            }
        return {"error": f"unknown op {op!r}"}

    async def serve(self, port: int) -> asyncio.AbstractServer:
        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            while line := await reader.readline():
                try:
                    reply = await self.op(json.loads(line))
                except Exception as e:  # noqa: BLE001 - answered to the caller
                    reply = {"error": str(e)}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", port)


class _Users:
    """asyncua's user manager: one `name:password` account; anonymous sessions are refused."""

    def __init__(self, account: str) -> None:
        self.name, _, self.password = account.partition(":")

    def get_user(self, iserver, username=None, password=None, certificate=None):  # type: ignore[no-untyped-def]
        from asyncua.server.users import User, UserRole

        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


async def build(
    port: int,
    host: str = "127.0.0.1",
    user: str | None = None,
    cert_dir: str | None = None,
) -> tuple[Server, int, dict[str, object]]:
    server = Server(user_manager=_Users(user) if user else None)
    await server.init()
    if user:
        server.set_security_IDs(["Username"])
    server.set_endpoint(f"opc.tcp://{host}:{port}")
    server.set_server_name("edge-gateway plcsim")
    if cert_dir:  # Basic256Sha256 SignAndEncrypt only, with a self-signed certificate made here once
        from pathlib import Path

        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key, cert = Path(cert_dir) / "server.pem", Path(cert_dir) / "server.der"
        await setup_self_signed_certificate(
            key, cert, "urn:edge-gateway:plcsim:server", host,
            [ExtendedKeyUsageOID.SERVER_AUTH], {"commonName": "plcsim"},
        )  # fmt: skip
        server.set_server_name("edge-gateway plcsim")
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy(
            [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        )
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NS_URI)
    plant = await server.nodes.objects.add_object(ua.NodeId("Plant", idx), "Plant")
    nodes: dict[str, object] = {}
    for name, (vt, value, writable) in NODES.items():
        node = await plant.add_variable(
            ua.NodeId(name, idx), name, ua.Variant(value, vt)
        )
        if writable:
            await node.set_writable()
        nodes[name] = node
    for name, nid in (
        ("Numeric", ua.NodeId(1001, idx)),
        ("Guid", ua.NodeId(GUID, idx, ua.NodeIdType.Guid)),
        ("Opaque", ua.NodeId(BYTES, idx, ua.NodeIdType.ByteString)),
    ):
        nodes[name] = await plant.add_variable(
            nid, name, ua.Variant(len(name), ua.VariantType.Int32)
        )
    return server, idx, nodes


async def add_bench(server: Server, idx: int, n: int) -> list[object]:
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", idx), "Bench")
    return [
        await folder.add_variable(
            ua.NodeId(f"Bench.{i}", idx),
            f"Bench.{i}",
            ua.Variant(0.0, ua.VariantType.Double),
        )
        for i in range(n)
    ]


async def bench_tick(server: Server, nodes: list[object], n: int) -> None:
    """Every bench node changes at once, stamped with this moment (SourceTimestamp = ServerTimestamp)."""
    now = datetime.now(UTC)
    for i, node in enumerate(nodes):
        dv = ua.DataValue(
            ua.Variant(float(n * 10_000 + i), ua.VariantType.Double),
            SourceTimestamp=now,
            ServerTimestamp=now,
        )
        await server.write_attribute_value(node.nodeid, dv)  # type: ignore[attr-defined]


async def tick(nodes: dict[str, object], n: int) -> None:
    await nodes["Temp"].write_value(
        ua.Variant(20.0 + (n % 50) / 10, ua.VariantType.Double)
    )  # type: ignore[attr-defined]
    await nodes["Counter"].write_value(ua.Variant(n, ua.VariantType.UInt32))  # type: ignore[attr-defined]
    code = ua.StatusCode(
        ua.StatusCodes.BadSensorFailure if n % 2 else ua.StatusCodes.Good
    )
    dv = ua.DataValue(ua.Variant(float(n), ua.VariantType.Double), StatusCode_=code)
    await nodes["Faulty"].write_value(dv)  # type: ignore[attr-defined]


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4840)
    ap.add_argument(
        "--cert-dir", help="Basic256Sha256 SignAndEncrypt, server.der/.pem in it"
    )
    ap.add_argument("--user", help="NAME:PASSWORD: require this account, no anonymous")
    ap.add_argument(
        "--period", type=float, default=0.2, help="seconds between plant ticks"
    )
    ap.add_argument(
        "--control", type=int, help="fault-injection control port (0: a free one)"
    )
    ap.add_argument(
        "--slow", type=float, default=0.0, help="ms of delay before every answer"
    )
    ap.add_argument("--bench", type=int, default=0, help="N bench nodes Bench.0..N-1")
    ap.add_argument(
        "--bench-period", type=float, default=1.0, help="seconds between bench changes"
    )
    args = ap.parse_args(argv)
    server, idx, nodes = await build(args.port, args.host, args.user, args.cert_dir)
    faults = Faults(server, args.slow)
    bench = await add_bench(server, idx, args.bench) if args.bench else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        ready = f"READY {args.port} {idx}"
        if args.control is not None:
            ctl = await faults.serve(args.control)
            ready += f" control={ctl.sockets[0].getsockname()[1]}"
        print(ready, flush=True)
        n = b = 0  # plant ticks, bench changes
        next_tick = next_bench = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                n += 1
                next_tick = max(next_tick + args.period, now)
                await tick(nodes, n)
            if bench and now >= next_bench:
                next_bench = max(next_bench + args.bench_period, now)
                b += 1
                await bench_tick(server, bench, b)
            due = min(next_tick, next_bench) if bench else next_tick
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            except TimeoutError:
                pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
    sys.exit(0)
