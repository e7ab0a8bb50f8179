"""Shared pieces of the delivery tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge_gateway.config.model import Backoff, Connector


def connector(**kw: Any) -> Connector:
    base = Connector(
        id="cloud",
        kind="mqtt5",
        scheme="tcp",
        host="127.0.0.1",
        port=1,
        client_id="edge-test",
        tenant="t1",
        device="gw1",
        batch=32,
        max_interval=0.1,
        backoff=Backoff(0.1, 0.5),
    )
    return replace(base, **kw)
