"""Hot reload as a plan: what a change from one snapshot to the next touches, done step by step, and
undone from the old snapshot when a step fails.

Each driver plugin plans its own endpoints (`plan_reload`: stop, start, restart, or update in place)
and carries out each step (`apply_step`) on the worker the table holds for that endpoint; the
runtime adds the connector (restarted on the same WAL cursor) and /metrics. The rollback walks every
step of the plan again, from the old snapshot: a worker the failed reload never reached is left
running as it is, one it touched gets its old configuration back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_gateway.config.diff import Impact, diff
from edge_gateway.core import registry
from edge_gateway.core.driver import ReloadStep, RuntimeContext
from edge_gateway.runtime.workers import WorkerTable

if TYPE_CHECKING:
    from edge_gateway.config.model import Snapshot

log = logging.getLogger(__name__)

_REVERSE = {"stop": "start", "start": "stop", "restart": "restart", "update": "update"}


@dataclass
class Plan:
    old: Snapshot
    new: Snapshot
    impact: Impact
    steps: list[ReloadStep] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.impact.empty

    @property
    def connector_changed(self) -> bool:
        return bool(self.impact.connectors_changed)


def make(old: Snapshot, new: Snapshot) -> Plan:
    steps = [s for plugin in registry.drivers().values() for s in plugin.plan_reload(old, new)]
    return Plan(old, new, diff(old, new), steps)


def run_steps(steps: list[ReloadStep], snap: Snapshot, table: WorkerTable, ctx: RuntimeContext) -> None:
    """Carry out `steps` against `snap`; the table is updated after each one (under its lock)."""
    for step in steps:
        plugin = registry.driver(step.plugin)
        with table.lock:
            worker = table.worker(step.endpoint_id)
            table.put(step.endpoint_id, step.plugin, plugin.apply_step(step, worker, snap, ctx))


def rollback_steps(plan: Plan, table: WorkerTable, ctx: RuntimeContext, undo: Callable[..., Any]) -> None:
    """Every step of the plan, reversed, from the old snapshot; one that fails does not stop the others."""
    for step in plan.steps:
        back = ReloadStep(step.plugin, step.endpoint_id, _REVERSE[step.action], step.devices)  # type: ignore[arg-type]
        undo(back.describe(), run_steps, [back], plan.old, table, ctx)
