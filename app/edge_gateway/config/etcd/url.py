"""`etcd://HOST:PORT[,HOST:PORT…]/PREFIX` and the TLS files and credentials that go with it.

One URL names the store for `edge-gateway run --config` and every `edge-cfg` command, so a gateway and
the operator's tool can never disagree on where a configuration lives. Secrets stay out of the URL
(shell history, `ps`, logs): they come from options or the environment, and the password only ever
from a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SCHEME = "etcd://"
DEFAULT_PORT = 2379
# A gateway id is a key segment and a user/role name in etcd's RBAC: keep it to a safe alphabet.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")

ENV = {
    "ca": "EDGE_ETCD_CA",
    "cert": "EDGE_ETCD_CERT",
    "key": "EDGE_ETCD_KEY",
    "user": "EDGE_ETCD_USER",
    "password_file": "EDGE_ETCD_PASSWORD_FILE",
}


class UrlError(ValueError):
    """A URL or credential setting that cannot name a store; the message says which part and why."""


@dataclass(frozen=True)
class EtcdUrl:
    endpoints: tuple[tuple[str, int], ...]  # (host, port), tried in this order
    prefix: str  # "/edge/config/v1/gw-01": no trailing slash; "" for a bare `etcd://HOST:PORT`
    gateway_id: str  # the last prefix segment ("" when there is no prefix)

    @classmethod
    def parse(cls, text: str, gateway_id: str | None = None) -> EtcdUrl:
        """`etcd://h1:2379,h2:2379/edge/config/v1/gw-01` → endpoints, prefix, gateway id (the last segment
        of the prefix unless `gateway_id` is given). A missing port is 2379. Raises UrlError."""
        if not text.startswith(SCHEME):
            raise UrlError(f"{text!r}: not an etcd URL (etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")
        rest = text[len(SCHEME) :]
        hosts, slash, path = rest.partition("/")
        if "@" in hosts or "?" in rest or "#" in rest:
            raise UrlError(
                f"{text!r}: user, password and options are not part of the URL; use --etcd-user and "
                "--etcd-password-file (or EDGE_ETCD_USER, EDGE_ETCD_PASSWORD_FILE)"
            )
        endpoints = []
        for part in hosts.split(","):
            if not part:
                raise UrlError(f"{text!r}: empty HOST:PORT")
            host, port = _host_port(text, part)
            endpoints.append((host, port))
        prefix = ("/" + path).rstrip("/") if slash else ""
        if "//" in prefix:
            raise UrlError(f"{text!r}: empty segment in the prefix {prefix!r}")
        last = prefix.rsplit("/", 1)[-1] if prefix else ""
        gid = gateway_id if gateway_id is not None else last
        if gid and not _ID.match(gid):
            raise UrlError(f"{text!r}: gateway id {gid!r} must be letters, digits, '.', '_' or '-'")
        return cls(tuple(endpoints), prefix, gid)

    def __str__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"{SCHEME}{hosts}{self.prefix}"

    def require_prefix(self) -> None:
        """Commands that read or write one gateway's tables need a prefix; `fleet status` does not."""
        if not self.prefix:
            raise UrlError(f"{self}: no PREFIX (etcd://HOST:PORT/edge/config/v1/GATEWAY_ID)")


def _host_port(text: str, part: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:2379
        host, _, port_text = part[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
    if not host or not _HOST.match(host if not part.startswith("[") else f"[{host}]"):
        raise UrlError(f"{text!r}: bad host {host!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UrlError(f"{text!r}: bad port {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class Credentials:
    """TLS files and an etcd user. TLS is on when a CA is given (https to etcd's JSON gateway); a client
    certificate needs its key. The password is read from `password_file` when the Store authenticates,
    and is never part of a repr, a log line or a message."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @classmethod
    def from_options_env(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password_file: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Options win over the environment (EDGE_ETCD_CA, _CERT, _KEY, _USER, _PASSWORD_FILE); an empty
        variable counts as unset. Raises UrlError for a half-given pair or a file that is not there."""
        env = os.environ if env is None else env
        given = {"ca": ca, "cert": cert, "key": key, "user": user, "password_file": password_file}
        vals = {k: (v if v else (env.get(ENV[k]) or None)) for k, v in given.items()}
        if (vals["cert"] is None) != (vals["key"] is None):
            raise UrlError("a client certificate needs both --etcd-cert and --etcd-key")
        if vals["cert"] is not None and vals["ca"] is None:
            raise UrlError("a client certificate needs TLS: give the CA with --etcd-ca")
        if (vals["user"] is None) != (vals["password_file"] is None):
            raise UrlError("an etcd user needs both --etcd-user and --etcd-password-file")
        for k in ("ca", "cert", "key", "password_file"):
            v = vals[k]
            if v is not None and not Path(v).is_file():
                raise UrlError(f"{ENV[k].removeprefix('EDGE_ETCD_').lower()} file {v} does not exist")
        return cls(**vals)

    def password(self) -> str:
        """The password, read from its file (trailing newline stripped) each time it is needed."""
        if self.password_file is None:
            raise UrlError("no password file")
        try:
            return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UrlError(f"cannot read the password file {self.password_file}: {e}") from None
