"""The plugin registry: every driver and connector, built in or installed, found the same way.

A plugin is a Python entry point in one of two groups:

    [project.entry-points."edge_gateway.drivers"]
    modbus = "edge_gateway.drivers.modbus.plugin:PLUGIN"

    [project.entry-points."edge_gateway.connectors"]
    mqtt5 = "..."

The entry-point name is the plugin's name (a driver's `proto` in drivers.yml). The object it
points at is the plugin itself, or a class or factory that returns it when called without
arguments. `pip install` of a distribution that declares such an entry point is how a plugin is
added: nothing of the gateway changes. The lists come from the installed metadata
(importlib.metadata), read once per process; `reset()` forgets them (tests that install a plugin).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from edge_gateway.core.driver import DriverPlugin

log = logging.getLogger(__name__)

DRIVERS = "edge_gateway.drivers"
CONNECTORS = "edge_gateway.connectors"
GROUPS = (DRIVERS, CONNECTORS)
BUILTIN_DIST = "edge-gateway"  # the distribution whose plugins are `kind: static`

T = TypeVar("T")


class PluginError(LookupError):
    """No plugin of that name is installed (the message lists the installed ones), or it failed to load."""


class _Group:
    def __init__(self, group: str) -> None:
        self.group = group
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] | None = None
        self.errors: dict[str, str] = {}  # name → why it could not be loaded

    def entry_points(self) -> list[EntryPoint]:
        return sorted(entry_points(group=self.group), key=lambda ep: ep.name)

    def load(self) -> dict[str, Any]:
        with self._lock:
            if self._loaded is None:
                loaded: dict[str, Any] = {}
                errors: dict[str, str] = {}
                for ep in self.entry_points():
                    if ep.name in loaded:  # two distributions claim one name: the first (by name order) wins
                        log.warning("plugin %s in %s is installed twice; using %s", ep.name, self.group, ep.value)
                        continue
                    try:
                        obj = ep.load()
                        if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "name")):
                            obj = obj()
                    except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not stop the others
                        errors[ep.name] = f"{type(e).__name__}: {e}"
                        log.error("plugin %s (%s = %s) failed to load: %s", ep.name, self.group, ep.value, e)
                        continue
                    loaded[ep.name] = obj
                self._loaded, self.errors = loaded, errors
            return self._loaded

    def reset(self) -> None:
        with self._lock:
            self._loaded = None
            self.errors = {}


_GROUPS = {g: _Group(g) for g in GROUPS}


def names(group: str) -> list[str]:
    """Every entry-point name of a group, loadable or not (`edge-cfg plugins`)."""
    return [ep.name for ep in _GROUPS[group].entry_points()]


def listing() -> dict[str, list[dict[str, str]]]:
    """group → [{name, value, dist, error?}] for every installed entry point."""
    out: dict[str, list[dict[str, str]]] = {}
    for group, g in _GROUPS.items():
        g.load()
        rows = []
        for ep in g.entry_points():
            row = {"name": ep.name, "value": ep.value, "dist": ep.dist.name if ep.dist is not None else "?"}
            if ep.name in g.errors:
                row["error"] = g.errors[ep.name]
            rows.append(row)
        out[group] = rows
    return out


def drivers() -> dict[str, DriverPlugin]:
    """name → driver plugin, for every driver plugin that loads."""
    return cast("dict[str, DriverPlugin]", _GROUPS[DRIVERS].load())


def connectors() -> dict[str, Any]:
    """name → connector plugin (their contract: the delivery runner's connector)."""
    return _GROUPS[CONNECTORS].load()


def _one(group: str, what: str, name: str) -> Any:
    g = _GROUPS[group]
    found = g.load()
    if name in found:
        return found[name]
    if name in g.errors:
        raise PluginError(f"{what} plugin {name!r} is installed but failed to load: {g.errors[name]}")
    installed = ", ".join(sorted(found)) or "none"
    raise PluginError(f"no {what} plugin {name!r} is installed (installed: {installed})")


def driver(name: str) -> DriverPlugin:
    return cast("DriverPlugin", _one(DRIVERS, "driver", name))


def connector(name: str) -> Any:
    return _one(CONNECTORS, "connector", name)


def is_builtin(name: str) -> bool:
    """Whether a driver plugin of that name comes with edge-gateway itself (drivers.yml `kind: static`)."""
    return any(
        ep.name == name and ep.dist is not None and ep.dist.name == BUILTIN_DIST
        for ep in _GROUPS[DRIVERS].entry_points()
    )


def driver_for_scheme(scheme: str) -> DriverPlugin | None:
    """The driver plugin that owns an endpoint scheme (endpoints.yml `scheme`), if one does."""
    for plugin in drivers().values():
        if scheme in plugin.schemes:
            return plugin
    return None


def reset() -> None:
    for g in _GROUPS.values():
        g.reset()


def each(fn: Callable[[DriverPlugin], T]) -> dict[str, T]:
    """fn applied to every driver plugin, by name."""
    return {name: fn(p) for name, p in drivers().items()}
