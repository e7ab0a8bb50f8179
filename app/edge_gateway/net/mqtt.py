"""The one place that builds a paho MQTT 5 client (VERSION2 callbacks) with its TLS settings.

Used by the MQTT connector (connectors/mqtt) and the MQTT source driver alike. TLS follows paho's
defaults: CERT_REQUIRED with hostname check, against `ca` or else the system CA store, with an
optional client certificate.
"""

from __future__ import annotations

import ssl
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class Tls(Protocol):
    @property
    def ca(self) -> str | None: ...

    @property
    def client_cert(self) -> str | None: ...

    @property
    def client_key(self) -> str | None: ...


def new_client(client_id: str, *, tls: bool, files: Tls | None = None, connect_timeout: float = 5.0) -> mqtt.Client:
    """A paho MQTT 5 client; `tls` switches TLS on, with `files` (config.model.TlsFiles) if given."""
    cl = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    cl.connect_timeout = connect_timeout
    if tls:
        cl.tls_set(
            ca_certs=files.ca if files else None,
            certfile=files.client_cert if files else None,
            keyfile=files.client_key if files else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return cl


def read_secret(path: str) -> str:
    """A password file, read at every connect (rotation needs no reload); the line end is dropped."""
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")
