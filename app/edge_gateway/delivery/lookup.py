"""connector.yml `kind` → the transport factory registered in the entry-point group `edge_gateway.connectors`.

Built-in and third-party connectors register the same way (the project's own pyproject.toml names
`mqtt5`). `mqtt5` is also known without package metadata (a source tree on PYTHONPATH, the image).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from edge_gateway.delivery.contract import Factory

GROUP = "edge_gateway.connectors"
BUILTIN = {"mqtt5": "edge_gateway.connectors.mqtt:factory"}


class UnknownConnector(LookupError):
    pass


def installed() -> dict[str, str]:
    """Every connector kind → its `module:attr`."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def connector_factory(kind: str) -> Factory:
    for ep in entry_points(group=GROUP):
        if ep.name == kind:
            f: Factory = ep.load()
            return f
    if kind in BUILTIN:
        import importlib

        mod, _, attr = BUILTIN[kind].partition(":")
        f = getattr(importlib.import_module(mod), attr)
        return f
    raise UnknownConnector(f"no connector {kind!r} installed (installed: {', '.join(sorted(installed()))})")


def schema_of(kind: str) -> dict[str, Any] | None:
    """The JSON Schema of one connector.yml entry of `kind` (the factory's `schema` attribute), if any."""
    try:
        f = connector_factory(kind)
    except Exception:  # noqa: BLE001 - a broken plugin must not stop the config check of the others
        return None
    s = getattr(f, "schema", None)
    return dict(s) if isinstance(s, dict) else None
