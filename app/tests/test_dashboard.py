"""The Grafana dashboard and the metric conventions of issue 20, against a real scrape of a real gateway.

The demo plant (PLC simulator on TCP and RS-485, a Mosquitto) runs the real `edge-gateway` process on
config/ plus one MQTT source driver, and the tests read its `/metrics` as Prometheus would. The
dashboard names only metrics and labels that scrape carries (a renamed metric or label would leave a
panel silently empty on a plant engineer's screen), every panel has a unit and every axis one unit,
`__requires` lists what the dashboard needs; the scrape has no `_created` series, one build_info
sample, ratios named `_ratio` within 0..1, `endpoint_id` (never `line`) for lines, and a configuration
revision that counts up with the content hash as a label.
"""

from __future__ import annotations

import json
import platform
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import edge_gateway.drivers.modbus.line  # noqa: F401 - imported lazily by the runtime; registers metrics
import edge_gateway.runtime.gateway  # noqa: F401 - imports every other subsystem and its metrics
from edge_gateway import __version__
from edge_gateway.metrics import REGISTRY, build_revision
from edge_gateway.testkit import LOOPBACK

from .drivers_mqtt_source.conftest import Publisher
from .runtime.plant import Plant

DASHBOARD = Path(__file__).resolve().parents[2] / "tools" / "grafana" / "edge-gateway.json"
PROMQL = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset",
}  # fmt: skip
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
# Unit ids of Grafana's valueFormats (packages/grafana-data/src/valueFormats/categories.ts) this dashboard may
# use: a misspelt id is not an error in Grafana, the axis just shows bare numbers.
GRAFANA_UNITS = {
    "none", "short", "percentunit", "percent", "s", "ms", "bytes", "decbytes", "Bps", "binBps", "cps", "ops",
    "reqps", "bool", "bool_yes_no", "bool_on_off",
}  # fmt: skip
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every series it scrapes
SOURCE = {  # one MQTT source driver on the plant's Mosquitto, so the mqtt_source_* series exist
    "endpoints.yml": "\nsrc_broker:\n  scheme: mqtt\n  host: {host}\n  port: {port}\n"
    "  opts: {{ client_id: gw-src-dash, keepalive: 30s }}\n",
    "drivers.yml": "\nlab:\n  kind: static\n  endpoint_id: src_broker\n  proto: mqtt\n"
    '  cfg:\n    subscriptions:\n      - {{ filter: "sensors/+/temp", qos: 1 }}\n',
    "variables.yml": "\n- tag: lab.{{1}}.temp_c\n  driver_id: lab\n  topic: sensors/+/temp\n  datatype: float32\n",
}


@dataclass
class Scrape:
    """What one GET /metrics returned: every series name it can carry and the labels seen on each."""

    text: str
    types: dict[str, str] = field(default_factory=dict)  # family → type
    names: set[str] = field(default_factory=set)  # every series name (a family without children still counts)
    labels: dict[str, set[str]] = field(default_factory=dict)  # series name → label names on its samples
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        s = cls(text)
        for fam in text_string_to_metric_families(text):
            s.types[fam.name] = fam.type  # the parser strips a counter's `_total`: its series is x_total
            s.names.update(fam.name + suffix for suffix in SUFFIXES.get(fam.type, ("",)))
            for sample in fam.samples:
                s.names.add(sample.name)
                s.labels.setdefault(sample.name, set()).update(sample.labels)
                s.samples.append((sample.name, sample.labels, sample.value))
        return s

    def value(self, name: str, **labels: str) -> float | None:
        for n, lab, v in self.samples:
            if n == name and lab == labels:
                return v
        return None

    def of(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples if n == name]


def scrape(plant: Plant) -> Scrape:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{plant.metrics_port}/metrics", timeout=5) as r:  # noqa: S310
        return Scrape.parse(r.read().decode())


def wait_for(plant: Plant, ready: Any, timeout: float, what: str) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s: Scrape | None = scrape(plant)
        except OSError:  # the control socket answers a moment before /metrics is bound
            s = None
        if s is not None and ready(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{plant.log_tail()}")
        time.sleep(0.2)


@dataclass
class Live:
    plant: Plant
    scrape: Scrape  # taken once everything the dashboard draws has samples


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    plant = Plant(tmp_path_factory.mktemp("dashboard"))
    try:
        for fname, text in SOURCE.items():
            plant.edit(fname, append=text.format(host=LOOPBACK, port=plant.broker.port))
        plant.start_gateway()
        plant.wait_ready()
        wait_for(plant, lambda s: s.value("mqtt_source_connected", endpoint_id="src_broker") == 1, 20, "the source")
        device = Publisher(plant.broker.port)
        try:
            device.pub("sensors/oven/temp", "21.5")
            device.pub("sensors/oven/temp", "warm")  # malformed: a bad-quality frame and a counted reason
        finally:
            device.close()
        # The utilisation window is 10 s: wait for it, so the ratio and its labels are in the scrape.
        s = wait_for(
            plant,
            lambda s: (
                s.value("mqtt_source_frames_total", driver_id="lab") == 2
                and len(s.of("modbus_line_utilisation_ratio")) == 2
                and s.of("connector_latency_seconds_bucket")
            ),
            40,
            "MQTT source frames, both lines' utilisation and an uplink round trip",
        )
        yield Live(plant, s)
    finally:
        plant.stop()


# -- the dashboard's expressions -------------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in doc["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def expressions(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(doc) for t in p["targets"]]
    return exprs + [v["query"] for v in doc["templating"]["list"] if v.get("type") == "query"]


def strip_labels(expr: str) -> str:
    expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)  # a variable query: metric, label
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists


def metric_names(expr: str) -> set[str]:
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", strip_labels(expr)))
    return {t for t in tokens if t not in PROMQL and not t.startswith("$")}


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """metric → the label names its `{…}` selector matches on."""
    out: dict[str, set[str]] = {}
    for name, body in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        out.setdefault(name, set()).update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    return out


def grouping_labels(expr: str) -> set[str]:
    lists = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {x.strip() for lst in lists for x in lst.split(",") if x.strip()}


def declared_labels(name: str) -> set[str]:
    """Label names the series is declared with in this process's registry (the code the gateway runs)."""
    collector = REGISTRY._names_to_collectors.get(name)
    return set(getattr(collector, "_labelnames", ()))


def labels_of(name: str, s: Scrape) -> set[str]:
    """Labels a series carries: seen in the scrape, else as declared (a family without children yet)."""
    extra = {"le"} if name.endswith("_bucket") else set()
    return (s.labels.get(name) or declared_labels(name)) | extra | TARGET_LABELS


def test_every_dashboard_expression_names_a_metric_of_the_scrape(live: Live) -> None:
    used = set().union(*(metric_names(e) for e in expressions(dashboard())))
    assert used, "no metric found in the dashboard"
    assert used <= live.scrape.names, f"not in the gateway's /metrics: {sorted(used - live.scrape.names)}"
    # The panels the issues ask for: poll latency, line utilisation, frames/s, WAL backlog, uplink RTT and
    # retries, config revision and reloads, build, and the MQTT source.
    for name in (
        "modbus_request_duration_seconds_bucket",
        "modbus_line_utilisation_ratio",
        "modbus_exception_total",
        "framebus_publish_total",
        "framebus_backlog_lag",
        "connector_latency_seconds_bucket",
        "connector_retry_total",
        "cfg_revision_current",
        "cfg_revision_info",
        "cfg_apply_total",
        "edge_gateway_build_info",
        "mqtt_source_received_total",
        "mqtt_source_frames_total",
        "mqtt_source_malformed_total",
        "mqtt_source_drop_total",
        "mqtt_source_queue_used",
        "mqtt_source_health",
        "mqtt_source_connected",
    ):
        assert name in used, name


def test_every_label_the_dashboard_uses_is_on_its_metric(live: Live) -> None:
    """`sum by (line)` over a series labelled `endpoint_id` draws one nameless line: caught here."""
    s = live.scrape
    for p in panels(dashboard()):
        for t in p["targets"]:
            expr = t["expr"]
            names = metric_names(expr)
            have = set().union(*(labels_of(n, s) for n in names))
            for name, used in matcher_labels(expr).items():
                assert used <= labels_of(name, s), (p["title"], name, used - labels_of(name, s))
            assert grouping_labels(expr) <= have, (p["title"], expr, grouping_labels(expr) - have)
            legend = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", t.get("legendFormat", "")))
            assert legend <= have, (p["title"], legend - have)


# -- units and axes -----------------------------------------------------------------------------------------------
def unit_of(p: dict[str, Any]) -> str | None:
    unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
    if p["type"] == "heatmap":  # the y axis is the buckets' unit
        y = p.get("options", {}).get("yAxis", {}).get("unit")
        assert y == unit, (p["title"], "heatmap y axis and field unit differ", y, unit)
    return unit if isinstance(unit, str) and unit else None


def axes(p: dict[str, Any]) -> dict[str, set[str]]:
    """left/right → the units of the series drawn on that axis (overrides by query refId applied)."""
    defaults = p["fieldConfig"]["defaults"]
    by_ref: dict[str, dict[str, Any]] = {}
    for o in p["fieldConfig"].get("overrides", []):
        m = o["matcher"]
        assert m["id"] == "byFrameRefID", (p["title"], "only byFrameRefID overrides can be checked", m)
        by_ref.setdefault(m["options"], {}).update({prop["id"]: prop["value"] for prop in o["properties"]})
    refs = {t["refId"] for t in p["targets"]}
    assert set(by_ref) <= refs, (p["title"], "override of no query", set(by_ref) - refs)
    out: dict[str, set[str]] = {}
    for ref in refs:
        props = by_ref.get(ref, {})
        unit = props.get("unit", defaults["unit"])
        side = props.get("custom.axisPlacement", defaults.get("custom", {}).get("axisPlacement", "auto"))
        assert side != "hidden" or "unit" not in props, p["title"]
        out.setdefault("right" if side == "right" else "left", set()).add(unit)
    return out


def test_every_panel_has_a_unit_and_every_axis_one() -> None:
    ps = panels(dashboard())
    assert len(ps) >= 20
    for p in ps:
        assert unit_of(p) in GRAFANA_UNITS, f"{p['title']}: no unit, or one Grafana does not know: {unit_of(p)}"
        for o in p["fieldConfig"].get("overrides", []):
            assert all(x["value"] in GRAFANA_UNITS for x in o["properties"] if x["id"] == "unit"), p["title"]
        if p["type"] == "timeseries":
            for side, units in axes(p).items():
                assert len(units) == 1, (p["title"], side, units)
        else:
            assert not p["fieldConfig"].get("overrides"), (p["title"], "one unit for a whole non-graph panel")


def test_the_revision_number_is_not_drawn_beside_counts() -> None:
    (rev,) = [p for p in panels(dashboard()) if "cfg_revision_current" in json.dumps(p["targets"])]
    assert {n for t in rev["targets"] for n in metric_names(t["expr"])} == {"cfg_revision_current", "cfg_revision_info"}


def test_requires_names_grafana_prometheus_and_every_panel_type() -> None:
    doc = dashboard()
    req = {(r["type"], r["id"]): r for r in doc["__requires"]}
    assert re.fullmatch(r"\d+\.\d+\.\d+", req[("grafana", "grafana")]["version"])
    assert ("datasource", "prometheus") in req
    used = {p["type"] for p in panels(doc)}
    assert {i for t, i in req if t == "panel"} == used
    assert {p["datasource"]["type"] for p in panels(doc)} == {"prometheus"}


# -- conventions of the scrape ----------------------------------------------------------------------------------------
def test_no_created_series(live: Live) -> None:
    assert not [n for n in live.scrape.names if n.endswith("_created")]
    assert "_created" not in live.scrape.text
    # Nor in OpenMetrics, which Prometheus asks for first.
    req = urllib.request.Request(
        f"http://{LOOPBACK}:{live.plant.metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - a loopback URL the test built
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    assert "modbus_pdu_total{" in text and "_created" not in text


def test_build_info_is_one_sample_of_one(live: Live) -> None:
    ((labels, v),) = live.scrape.of("edge_gateway_build_info")
    assert v == 1
    # The gateway runs this venv's interpreter and this source tree (no REVISION baked in: "unknown").
    assert labels == {"version": __version__, "revision": build_revision(), "python": platform.python_version()}


def test_build_revision_is_baked_or_unknown(tmp_path: Path) -> None:
    f = tmp_path / "REVISION"
    assert build_revision(f) == "unknown"  # none baked in
    f.write_text("24F0FE0A1B2C\n")
    assert build_revision(f) == "24f0fe0a1b2c"
    f.write_text("$(git rev-parse HEAD)\n")  # a build that forgot to expand it
    assert build_revision(f) == "unknown"


def test_ratios_are_named_and_bounded(live: Live) -> None:
    s = live.scrape
    util = s.of("modbus_line_utilisation_ratio")
    assert {lab["endpoint_id"] for lab, _ in util} == {"plc_tcp", "rs485_0"}
    for name in {n for n, _, _ in s.samples if n.endswith("_ratio")}:
        for lab, v in s.of(name):
            assert 0.0 <= v <= 1.0, (name, lab, v)
    assert "modbus_line_utilisation" not in s.names


def test_one_label_name_for_a_line_and_a_driver(live: Live) -> None:
    s = live.scrape
    assert not [n for n, lab, _ in s.samples if "line" in lab], "lines are labelled endpoint_id"
    assert {lab["endpoint_id"] for lab, _ in s.of("modbus_line_bytes_total")} == {"plc_tcp", "rs485_0"}
    assert {"driver_id", "code"} == declared_labels("modbus_exception_total")
    for name in s.names:  # an endpoint is endpoint_id and a driver driver_id, whatever the subsystem
        assert not labels_of(name, s) & {"line", "endpoint", "driver"}, name


def test_config_revision_counts_up_with_the_hash_as_a_label(live: Live) -> None:
    plant = live.plant
    running = plant.ctl("status")["revision"]
    s = scrape(plant)
    assert s.value("cfg_revision_current") == 1
    assert s.of("cfg_revision_info") == [({"hash": running[:12]}, 1.0)]

    plant.edit("drivers.yml", append="\n# a comment: other content, the same configuration\n")
    answer = plant.ctl("reload")
    assert answer["result"] == "unchanged" and answer["revision"] != running
    s = scrape(plant)
    assert s.value("cfg_revision_current") == 2
    assert s.of("cfg_revision_info") == [({"hash": answer["revision"][:12]}, 1.0)]  # the old hash is gone

    plant.edit("drivers.yml", append="\nbroken: [\n")
    assert plant.ctl("reload")["result"] == "invalid"
    s = scrape(plant)
    assert s.value("cfg_revision_current") == 2  # nothing new runs
    assert s.of("cfg_revision_info") == [({"hash": answer["revision"][:12]}, 1.0)]
    assert (s.value("cfg_apply_total", result="invalid") or 0) >= 1  # the file watcher may have refused it too
