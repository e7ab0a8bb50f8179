"""connector.yml `kind` → the connector plugin registered in the entry-point group `edge_gateway.connectors`.

Built-in and third-party connectors register the same way (core/registry.py; the project's own
pyproject.toml names `mqtt5`). This is the one place delivery and config ask for a connector.
"""

from __future__ import annotations

from typing import Any

from edge_gateway.core import registry
from edge_gateway.delivery.contract import ConnectorPlugin, Factory

UnknownConnector = registry.PluginError


def installed() -> list[str]:
    """Every connector kind that loads."""
    return sorted(registry.connectors())


def plugin(kind: str) -> ConnectorPlugin:
    p: ConnectorPlugin = registry.connector(kind)
    return p


def connector_factory(kind: str) -> Factory:
    return plugin(kind).factory


def schema_of(kind: str) -> dict[str, Any] | None:
    """The JSON Schema of one connector.yml entry of `kind`, if its plugin ships one."""
    s = getattr(registry.connectors().get(kind), "schema", None)
    return dict(s) if isinstance(s, dict) else None
