"""Real etcd for tests, benchmarks and `make fleet-demo`: one member or a 3-member cluster on loopback.

Each member is a real `etcd` process (Debian's etcd-server, 3.4) with its data directory under
`workdir`, peer and client URLs on 127.0.0.1 (stable_port: a stopped member restarts on its ports).
A member can be stopped (SIGTERM), killed (SIGKILL) and started again, by its PID; `leader()` says
which one leads. `tls=True` serves clients over https and requires client certificates signed by a CA
the fixture makes (`certs`). `enable_auth()` turns on RBAC with the recipe of config/etcd/README.md.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.config.etcd.store import (
    CONFIG_ROOT,
    PRESENCE_ROOT,
    STATUS_ROOT,
    EtcdError,
    Store,
    config_prefix,
    presence_key,
    range_end,
    status_key,
)
from edge_gateway.config.etcd.url import Credentials, EtcdUrl
from edge_gateway.testkit import LOOPBACK, require, stable_port, stop_pid

ROOT_PASSWORD = "root-secret"  # a test cluster's root; the fixture writes it to a 0600 file


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    # No CN: with auth on, etcd refuses a request through its JSON gateway from a certificate with a CN
    # ("CommonName of client sending a request against gateway will be ignored…", CVE-2018-16886): the
    # name goes into O, the user comes from --etcd-user.
    client_cert: Path
    client_key: Path

    def client_pair(self, name: str) -> tuple[Path, Path]:
        """Another client certificate (O=`name`, no CN), signed by the same CA."""
        return _client_cert(self.ca.parent, name)


def make_certs(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, with `cryptography`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue(directory, "ca", "edge-test-ca", None, ca=True)
    _issue(directory, "server", "localhost", (ca_key, ca_cert), server=True)
    client_cert, client_key = _client_cert(directory, "root")
    return TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server-key.pem", client_cert, client_key
    )


def _client_cert(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    _issue(directory, f"client-{name}", name, (ca_key, ca_cert))
    return directory / f"client-{name}.pem", directory / f"client-{name}-key.pem"


def _issue(directory: Path, stem: str, cn: str, issuer: Any, ca: bool = False, server: bool = False) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    client = not ca and not server
    attr = NameOID.ORGANIZATION_NAME if client else NameOID.COMMON_NAME
    name = x509.Name([x509.NameAttribute(attr, cn)])
    issuer_key, issuer_cert = issuer if issuer else (key, None)
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
    cert = b.sign(issuer_key, hashes.SHA256())
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}-key.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return key, cert


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


@dataclass
class Etcd:
    """`members` real etcd processes forming one cluster. Use as a context manager, or start()/close()."""

    members: int = 1
    workdir: Path | None = None
    tls: bool = False
    max_request_bytes: int | None = None  # etcd's default is 1.5 MiB
    extra: list[str] = field(default_factory=list)
    nodes: list[EtcdMember] = field(default_factory=list)
    certs: TlsFiles | None = None
    auth: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="etcd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls and self.certs is None:
            self.certs = make_certs(self.workdir / "tls")
        if not self.nodes:
            for i in range(self.members):
                self.nodes.append(
                    EtcdMember(
                        f"m{i}",
                        stable_port(),
                        stable_port(),
                        self.workdir / f"m{i}.data",
                        self.workdir / f"m{i}.log",
                    )
                )
        self.root_password_file = self.workdir / "root.password"
        self.root_password_file.write_text(ROOT_PASSWORD + "\n")
        self.root_password_file.chmod(0o600)

    # -- addresses --

    @property
    def endpoints(self) -> str:
        return ",".join(f"{LOOPBACK}:{m.client_port}" for m in self.nodes)

    def url(self, prefix: str = "") -> str:
        """`etcd://127.0.0.1:A,127.0.0.1:B,…/prefix`."""
        return f"etcd://{self.endpoints}{prefix}"

    def gateway_url(self, gateway_id: str) -> str:
        return self.url(config_prefix(gateway_id))

    def creds(self, user: str | None = None, password_file: Path | None = None) -> Credentials:
        """Credentials for `user` (root when auth is on and no user is given), with the client certificate
        under TLS."""
        if self.auth and user is None:
            user, password_file = "root", self.root_password_file
        tls: dict[str, str | None] = {}
        if self.certs is not None:
            tls = {"ca": str(self.certs.ca), "cert": str(self.certs.client_cert), "key": str(self.certs.client_key)}
        return Credentials(
            user=user,
            password_file=str(password_file) if password_file else None,
            **tls,  # type: ignore[arg-type]
        )

    def cli_args(self, user: str | None = None, password_file: Path | None = None) -> list[str]:
        """The edge-cfg options for `creds(user, password_file)`."""
        c = self.creds(user, password_file)
        out: list[str] = []
        for opt, value in (
            ("--etcd-ca", c.ca),
            ("--etcd-cert", c.cert),
            ("--etcd-key", c.key),
            ("--etcd-user", c.user),
            ("--etcd-password-file", c.password_file),
        ):
            if value:
                out += [opt, value]
        return out

    def store(self, prefix: str = "", user: str | None = None, password_file: Path | None = None) -> Store:
        return Store(EtcdUrl.parse(self.url(prefix)), self.creds(user, password_file), timeout=5.0)

    # -- processes --

    def _command(self, m: EtcdMember) -> list[str]:
        scheme = "https" if self.tls else "http"
        cluster = ",".join(f"{n.name}=http://{LOOPBACK}:{n.peer_port}" for n in self.nodes)
        cmd = [
            require("etcd"),
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            f"{scheme}://{LOOPBACK}:{m.client_port}",
            "--advertise-client-urls",
            f"{scheme}://{LOOPBACK}:{m.client_port}",
            "--listen-peer-urls",
            f"http://{LOOPBACK}:{m.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://{LOOPBACK}:{m.peer_port}",
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            f"edge-test-{os.getpid()}-{self.nodes[0].peer_port}",
            "--initial-cluster-state",
            "new",
            "--enable-v2=false",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        if self.max_request_bytes:
            cmd += ["--max-request-bytes", str(self.max_request_bytes)]
        if self.certs is not None:
            cmd += [
                "--cert-file",
                str(self.certs.server_cert),
                "--key-file",
                str(self.certs.server_key),
                "--trusted-ca-file",
                str(self.certs.ca),
                "--client-cert-auth",
            ]
        return cmd + self.extra

    def start_member(self, i: int) -> None:
        m = self.nodes[i]
        if m.pid is not None:
            return
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(self._command(m), stdout=log, stderr=log)

    def stop_member(self, i: int) -> None:
        """SIGTERM (then SIGKILL), by PID."""
        m = self.nodes[i]
        if m.proc is not None:
            stop_pid(m.proc, timeout=10.0)
            m.proc = None

    def kill_member(self, i: int) -> None:
        """SIGKILL, by PID: a crash, no clean shutdown."""
        m = self.nodes[i]
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)
        m.proc = None

    def start(self, timeout: float = 30.0) -> Etcd:
        for i in range(len(self.nodes)):
            self.start_member(i)
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for i in range(len(self.nodes)):
            self.stop_member(i)

    close = stop

    def wait_ready(self, timeout: float = 30.0, members: list[int] | None = None) -> None:
        """Until every running member (or `members`) answers a linearizable read (there is a leader)."""
        deadline = time.monotonic() + timeout
        for i in members if members is not None else range(len(self.nodes)):
            m = self.nodes[i]
            if m.pid is None:
                continue
            s = self._member_store(i)
            try:
                while True:
                    try:
                        s.revision()
                        break
                    except EtcdError as e:
                        if m.proc is not None and m.proc.poll() is not None:
                            raise RuntimeError(f"etcd {m.name} exited: see {m.log}") from e
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"etcd {m.name} not ready after {timeout}s: {e}") from e
                        time.sleep(0.1)
            finally:
                s.close()

    def _member_store(self, i: int) -> Store:
        url = EtcdUrl.parse(f"etcd://{LOOPBACK}:{self.nodes[i].client_port}")
        return Store(url, self.creds(), timeout=2.0)

    def leader(self) -> int:
        """The index of the leading member (asks each running member's maintenance status)."""
        for i, m in enumerate(self.nodes):
            if m.pid is None:
                continue
            s = self._member_store(i)
            try:
                st = s.call("maintenance/status", {})
            except EtcdError:
                continue
            finally:
                s.close()
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return i
        raise RuntimeError("no member is the leader")

    def put(self, key: str, text: str) -> int:
        """A raw write (as root), behind edge-cfg's back: no lint, no _meta. Returns the revision."""
        with self.store() as s:
            answer = s.call("kv/put", {"key": _b64(key), "value": _b64(text)})
            return int(answer["header"]["revision"])

    def delete(self, key: str) -> int:
        """A raw delete (as root). Returns the revision."""
        with self.store() as s:
            answer = s.call("kv/deleterange", {"key": _b64(key)})
            return int(answer["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact up to `revision` (default: the current one); returns it."""
        with self.store() as s:
            rev = revision if revision is not None else s.revision()
            s.compact(rev)
            return rev

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- RBAC (config/etcd/README.md, "RBAC") --

    def enable_auth(self, gateways: Sequence[str] = (), operators: Sequence[str] = ()) -> dict[str, Path]:
        """Root user, one user+role per gateway (read its config prefix, write its status and presence)
        and operator users (read/write every config prefix, read status and presence); then auth on.
        Returns user → password file (0600)."""
        files: dict[str, Path] = {}
        with self.store() as s:
            _auth(s, "user/add", {"name": "root", "password": ROOT_PASSWORD})
            _auth(s, "user/grant", {"user": "root", "role": "root"})
            for gw in gateways:
                files[gw] = self.add_gateway_user(s, gw)
            for op in operators:
                files[op] = self._add_user(s, op)
                _auth(s, "role/add", {"name": op})
                for key, perm in (
                    (CONFIG_ROOT + "/", "READWRITE"),
                    (STATUS_ROOT + "/", "READ"),
                    (PRESENCE_ROOT + "/", "READ"),
                ):
                    _grant(s, op, key, range_end(key), perm)
                _auth(s, "user/grant", {"user": op, "role": op})
            _auth(s, "enable", {})
        self.auth = True
        return files

    def add_gateway_user(self, s: Store, gw: str) -> Path:
        path = self._add_user(s, gw)
        _auth(s, "role/add", {"name": gw})
        prefix = config_prefix(gw) + "/"
        _grant(s, gw, prefix, range_end(prefix), "READ")
        _grant(s, gw, status_key(gw), None, "READWRITE")
        _grant(s, gw, presence_key(gw), None, "READWRITE")
        _auth(s, "user/grant", {"user": gw, "role": gw})
        return path

    def _add_user(self, s: Store, name: str) -> Path:
        assert self.workdir is not None
        password = f"{name}-{os.urandom(6).hex()}"
        path = self.workdir / f"{name}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        _auth(s, "user/add", {"name": name, "password": password})
        return path


def _auth(s: Store, what: str, body: dict[str, Any]) -> dict[str, Any]:
    return s.call(f"auth/{what}", body)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _grant(s: Store, role: str, key: str, end: str | None, perm: str) -> None:
    p: dict[str, Any] = {"permType": perm, "key": _b64(key)}
    if end is not None:
        p["range_end"] = _b64(end)
    _auth(s, "role/grant", {"name": role, "perm": p})


def dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
