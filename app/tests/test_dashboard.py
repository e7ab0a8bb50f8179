"""The Grafana dashboard names only metrics the gateway really exports (a renamed metric would leave
a panel silently empty on a plant engineer's screen)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import edge_gateway.drivers.modbus.line  # noqa: F401 - imported lazily by the runtime; registers metrics
import edge_gateway.runtime.gateway  # noqa: F401 - imports every other subsystem and its metrics
from edge_gateway.metrics import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "tools" / "grafana" / "edge-gateway.json"
PROMQL = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset",
}  # fmt: skip
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def exported() -> set[str]:
    """Every series name /metrics can carry (a labelled family without children has no samples yet)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)  # a variable query: metric, label
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {t for t in tokens if t not in PROMQL and not t.startswith("$")}


def test_every_dashboard_expression_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in doc["templating"]["list"] if v.get("type") == "query"]
    have = exported()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "no metric found in the dashboard"
    assert used <= have, f"not exported by the gateway: {sorted(used - have)}"
    # The panels the issue asks for: poll latency, line utilisation, frames/s, WAL backlog, uplink RTT and
    # retries, config revision and reloads.
    for name in (
        "modbus_request_duration_seconds_bucket",
        "modbus_line_utilisation",
        "framebus_publish_total",
        "framebus_backlog_lag",
        "connector_latency_seconds_bucket",
        "connector_retry_total",
        "cfg_revision_current",
        "cfg_apply_total",
    ):
        assert name in used, name
