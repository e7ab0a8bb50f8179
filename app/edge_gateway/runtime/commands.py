"""Commands into the running gateway: cloud writes (the downlink's `Writes`) and the control socket's
requests (`edge-ctl status`, `connector.*`, `reload`).

Cloud writes: the connector parses a command and hands its tag and value to `WriteRouter.resolve`,
which asks every driver plugin (core/registry.py) whether the tag is its own; the owner validates it
by its rules (or refuses it), and `submit` queues it on the owner's worker. Delivery imports no
driver and no driver rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from edge_gateway.core import registry
from edge_gateway.core.driver import Refused, WriteTarget
from edge_gateway.core.frame import Value
from edge_gateway.runtime.control import ControlError
from edge_gateway.runtime.workers import WorkerTable

if TYPE_CHECKING:
    from edge_gateway.config.model import Snapshot
    from edge_gateway.delivery.runner import Runner
    from edge_gateway.runtime.gateway import Gateway

RELOAD_TIMEOUT = 120.0


class WriteRouter:
    """`resolve` by the owning plugin's rules against the running snapshot; `submit` to its worker.
    `submit_item` (tests, tools) replaces the worker table: it receives the plugin's tag model."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        workers: WorkerTable | None = None,
        submit_item: Callable[[Any, Value], Future[None]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._workers = workers
        self._submit_item = submit_item

    def resolve(self, tag: str, value: Value) -> WriteTarget:
        snap = self._snapshot()
        for plugin in registry.drivers().values():
            target = plugin.resolve_write(snap, tag, value)
            if target is not None:
                return target
        raise Refused("unknown_tag", f"unknown tag {tag!r}")

    def submit(self, target: WriteTarget, value: Value) -> Future[None]:
        if self._submit_item is not None:
            return self._submit_item(target.item, value)
        if self._workers is None:
            raise Refused("unavailable", "no line accepts writes in this process")
        entry = self._workers.get(target.endpoint_id)
        if entry is None or not entry.worker.is_alive():
            raise ControlError(f"the line of {target.tag} is not running")
        return registry.driver(entry.plugin).submit_write(entry.worker, target, value)


def register(gw: Gateway) -> None:
    """The control socket's commands."""
    c = gw.control
    c.register("status", lambda req: gw.status())
    c.register("connector.stats", _connector(gw, lambda up: up.stats()))
    c.register("connector.reconnect", _connector(gw, _reconnect))
    c.register("reload", lambda req: _reload(gw))
    if os.environ.get("EDGE_GATEWAY_TEST_HOOKS") == "1":  # never set by the shipped units
        c.register("test.stall_wal", lambda req: _stall_wal(gw, req))


def _connector(gw: Gateway, fn: Callable[[Runner], Any]) -> Callable[[dict[str, Any]], Any]:
    def handler(req: dict[str, Any]) -> Any:
        name = req.get("name", "mqtt")
        up = gw.runner
        if up is None:
            raise ControlError("no connector is configured")
        if name not in ("mqtt", "mqtt5", up.cfg.id):
            raise ControlError(f"unknown connector {name!r}; this gateway has {up.cfg.id!r} (mqtt)")
        return fn(up)

    return handler


def _reconnect(up: Runner) -> dict[str, Any]:
    if not up.is_alive():
        raise ControlError(f"the uplink {up.cfg.id} is not running (state {up.state.value}): nothing to reconnect")
    up.reconnect()
    return {
        "requested": True,
        "connector": up.cfg.id,
        "broker": up.transport.status().get("broker"),
        "state": up.state.value,
        "inflight": up.window.open,
    }


def _reload(gw: Gateway) -> Any:
    """`edge-ctl reload`: answers when the reload is done (applied, unchanged, invalid or rolled back)."""
    if gw.reloader is None:
        raise ControlError("this gateway was started without a config directory: nothing to reload")
    return gw.reloader.request("edge-ctl reload").result(timeout=RELOAD_TIMEOUT)


def _stall_wal(gw: Gateway, req: dict[str, Any]) -> Any:
    """Test hook (EDGE_GATEWAY_TEST_HOOKS=1): a WAL writer that stops making progress, as a hung disk would."""
    seconds = float(req.get("seconds", 60))
    gw.writer.stall(seconds)
    return {"stalled_s": seconds}
