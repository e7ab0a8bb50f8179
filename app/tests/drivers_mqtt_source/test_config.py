"""The MQTT parts of a config: the example loads, and every MQTT lint rule points at its line."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from edge_gateway.config import cli
from edge_gateway.config.diff import Impact, diff
from edge_gateway.config.loader import ConfigError, lint, load_snapshot
from edge_gateway.core import registry
from edge_gateway.drivers.mqtt_source.model import Payload

ROOT = Path(__file__).resolve().parents[3] / "config"
EXAMPLE = ROOT / "examples" / "mqtt-source"
FILES = ("endpoints.yml", "drivers.yml", "variables.yml", "connector.yml", "gateway.yml")

Make = Callable[..., Path]


@pytest.fixture
def cfg(tmp_path: Path) -> Make:
    """A copy of the MQTT example (or, `mixed=True`, the Modbus demo with the example's MQTT
    endpoints, drivers and tags appended), with `file: (old, new)` edits applied."""

    def make(edits: dict[str, tuple[str, str]] | None = None, mixed: bool = False) -> Path:
        d = tmp_path / "cfg"
        d.mkdir()
        for f in FILES:
            text = (ROOT / f).read_text() if mixed else (EXAMPLE / f).read_text()
            if mixed and f in ("endpoints.yml", "drivers.yml", "variables.yml"):
                text += "\n" + (EXAMPLE / f).read_text()
            (d / f).write_text(text)
        for f, (old, new) in (edits or {}).items():
            text = (d / f).read_text()
            assert old in text, f"edit target {old!r} not in {f}"
            (d / f).write_text(text.replace(old, new, 1))
        return d

    return make


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_the_example_loads_with_no_problem() -> None:
    assert lint(EXAMPLE) == []
    s = load_snapshot(EXAMPLE)
    assert {d.proto for d in s.plugin_devices.values()} == {"mqtt"}  # the example is MQTT only
    ep = s.plugin_endpoints["local_broker"]
    assert (ep.scheme, ep.host, ep.port, ep.client_id, ep.session_expiry) == (
        "mqtt",
        "127.0.0.1",
        18831,
        "edge-01-src",
        3600,
    )
    lab = s.plugin_devices["lab_sensors"]
    assert [(x.filter, x.qos) for x in lab.cfg.subscriptions] == [("sensors/+/temp", 1), ("sensors/+/env", 1)]
    assert (lab.cfg.retained, lab.cfg.queue, lab.cfg.recover) == ("take", 1000, 5.0)
    assert s.plugin_devices["energy_meters"].cfg.retained == "ignore"
    tags = {t.tag: t for t in s.plugin_tags}
    assert tags["lab.{1}.rh_pct"].payload == Payload("json", "/sample/rh")
    assert tags["meter.{1}.kwh"].scale is not None and tags["meter.{1}.kwh"].scale(1500) == 1.5
    assert s.devices_on("local_broker") == (lab, s.plugin_devices["energy_meters"])


def test_modbus_and_mqtt_in_one_config(cfg: Make) -> None:
    s = load_snapshot(cfg(mixed=True))
    assert "plc_tcp" in s.plugin_endpoints and "local_broker" in s.plugin_endpoints
    assert s.plugin_devices["plc1"].proto == "modbus" and s.plugin_devices["lab_sensors"].proto == "mqtt"
    modbus, mqtt = registry.driver("modbus"), registry.driver("mqtt")
    assert "local_broker" not in modbus.endpoints(s) and "plc_tcp" not in mqtt.endpoints(s)  # each its own
    mqtt_ids = {d for d, dev in s.plugin_devices.items() if dev.proto == "mqtt"}
    assert len([t for t in s.plugin_tags if t.driver_id in mqtt_ids]) == 5


def test_defaults_and_mqtts(cfg: Make) -> None:
    d = cfg(
        {
            "endpoints.yml": (
                "  scheme: mqtt                  # mqtt | mqtts (TLS)\n  host: 127.0.0.1\n  port: 18831",
                "  scheme: mqtts\n  host: broker.local",
            ),
            "drivers.yml": ("    retained: ignore\n", "    queue: 50\n"),
        }
    )
    (d / "endpoints.yml").write_text((d / "endpoints.yml").read_text() + "    ca: certs/ca.pem\n    username: gw\n")
    s = load_snapshot(d)
    ep = s.plugin_endpoints["local_broker"]
    assert (ep.scheme, ep.port, ep.username) == ("mqtts", 8883, "gw")
    assert ep.tls is not None and ep.tls.ca == str((d / "certs/ca.pem").resolve())
    em = s.plugin_devices["energy_meters"].cfg
    assert (em.retained, em.queue) == ("take", 50)


def test_diff_of_mqtt_changes(cfg: Make) -> None:
    """The diff names MQTT entries like any other; the MQTT plugin's plan turns them into one action per
    endpoint: a change of tags swaps the device's tag map, any other change restarts the source (one
    client serves every device of an endpoint)."""
    old = load_snapshot(EXAMPLE)
    mqtt = registry.driver("mqtt")

    def changed(edits: dict[str, tuple[str, str]]) -> tuple[Impact, list[tuple[str, str, tuple[str, ...]]]]:
        d = cfg(edits)
        try:
            new = load_snapshot(d)
            assert registry.driver("modbus").plan_reload(old, new) == []  # no Modbus line is touched
            return diff(old, new), [(s.action, s.endpoint_id, s.devices) for s in mqtt.plan_reload(old, new)]
        finally:
            shutil.rmtree(d)

    i, steps = changed({"variables.yml": ("pointer: /sample/t }", "pointer: /sample/temp }")})
    assert i.variables_changed == ("lab_sensors",) and steps == [("update", "local_broker", ("lab_sensors",))]
    i, steps = changed({"drivers.yml": ('filter: "meters/#", qos: 2', 'filter: "meters/#", qos: 1')})
    assert steps == [("restart", "local_broker", ())]  # one client, one restart
    i, steps = changed({"endpoints.yml": ("keepalive: 30s", "keepalive: 10s")})
    assert i.endpoints_changed == ("local_broker",) and steps == [("restart", "local_broker", ())]
    i, steps = changed(  # energy_meters moves to a second broker
        {
            "endpoints.yml": (
                "local_broker:",
                "plant_broker:\n  scheme: mqtt\n  host: 127.0.0.1\n  opts: { client_id: edge-01-plant }\nlocal_broker:",
            ),
            "drivers.yml": ("endpoint_id: local_broker     # a second", "endpoint_id: plant_broker     # a second"),
        }
    )
    assert steps == [("restart", "local_broker", ()), ("start", "plant_broker", ())]
    assert "endpoints added: plant_broker" in i.lines()
    assert diff(old, replace(old)).empty


# (id, file, old, new, needle of the reported line, message fragment[, mixed])
ERRORS = [
    ("bad-filter", "drivers.yml", '"sensors/+/temp"', '"sensors/te#mp"', "te#mp", "'#' must be a whole level"),
    ("plus-in-level", "drivers.yml", '"sensors/+/env"', '"sensors/x+/env"', "x+/env", "'+' must be a whole level"),
    ("shared-sub", "drivers.yml", '"meters/#"', '"$share/g/meters/#"', "$share", "shared subscriptions"),
    (
        "duplicate-subscription",
        "drivers.yml",
        '- { filter: "sensors/+/env", qos: 1 }',
        '- { filter: "sensors/+/temp", qos: 0 }',
        'filter: "sensors/+/temp", qos: 0',
        "listed twice",
    ),
    ("bad-qos", "drivers.yml", "qos: 2 }", "qos: 3 }", "qos: 3", "qos 3 is not one of 0, 1, 2"),
    ("bad-retained", "drivers.yml", "retained: ignore", "retained: keep", "retained: keep", "'keep' is not one of"),
    (
        "no-subscriptions",
        "drivers.yml",
        'subscriptions:\n      - { filter: "meters/#", qos: 2 }',
        "subscriptions: []",
        "subscriptions: []",
        "should be non-empty",
    ),
    ("pointer-syntax", "variables.yml", "pointer: /sample/rh", "pointer: sample.rh", "sample.rh", "starts with '/'"),
    ("pointer-fragment", "variables.yml", "pointer: /sample/rh", "pointer: '#/sample/rh'", "#/sample", "URI-fragment"),
    ("pointer-tilde", "variables.yml", "pointer: /sample/rh", "pointer: /sample~2rh", "~2", "followed by 0 or 1"),
    (
        "pointer-needs-json",
        "variables.yml",
        "payload: { format: number }",
        "payload: { format: number, pointer: /v }",
        "pointer: /v",
        "a pointer needs payload format json",
    ),
    (
        "placeholder-beyond-captures",
        "variables.yml",
        "- tag: meter.{1}.kwh            # meters/hall/m7, 4 raw bytes → meter.hall.m7.kwh ('#' levels joined by '.')\n"
        "  driver_id: energy_meters\n  topic: meters/#",
        "- tag: meter.{3}.kwh\n  driver_id: energy_meters\n  topic: meters/+/#",
        "meter.{3}.kwh",
        "placeholder {3} but the topic has 2 wildcard levels",
    ),
    ("placeholder-zero", "variables.yml", "- tag: lab.{1}.air_c", "- tag: lab.{0}.air_c", "lab.{0}", "must be {1}"),
    (
        "placeholder-on-exact-topic",
        "variables.yml",
        "- tag: lab.boiler.temp_c",
        "- tag: lab.{1}.temp_exact",
        "temp_exact",
        "the topic has no wildcards",
    ),
    (
        "bad-topic-filter",
        "variables.yml",
        "topic: sensors/+/env",
        "topic: sensors/#/env",
        "sensors/#/env",
        "'#' must be",
    ),
    (
        "topic-not-subscribed",
        "variables.yml",
        "topic: sensors/boiler/temp",
        "topic: boilers/b1/temp",
        "boilers/b1/temp",
        "no subscription of driver lab_sensors delivers 'boilers/b1/temp'",
    ),
    (
        "read-only",
        "variables.yml",
        "  datatype: int16\n",
        "  datatype: int16\n  access: RW\n",
        "access: RW",
        "read-only",
    ),
    (
        "address-on-mqtt-tag",
        "variables.yml",
        "  datatype: int16\n",
        "  datatype: int16\n  address: { type: holding, addr: 0 }\n",
        "address: { type",
        "address is for Modbus tags",
    ),
    (
        "missing-topic",
        "variables.yml",
        "  topic: sensors/boiler/temp\n",
        "",
        "- tag: lab.boiler.temp_c",
        "needs a topic",
    ),
    (
        "format-datatype",
        "variables.yml",
        "payload: { format: number }",
        "payload: { format: string }",
        "datatype: float32",
        "a string payload cannot give float32",
    ),
    (
        "endian-needs-bytes",
        "variables.yml",
        "payload: { format: number }",
        "payload: { format: number, endian: little }",
        "endian: little",
        "endian applies to payload format bytes only",
    ),
    ("bad-scale", "variables.yml", 'scale: "value / 10"', 'scale: "value.real"', "value.real", "attribute access"),
    (
        "unknown-payload-format",
        "variables.yml",
        "format: bytes",
        "format: cbor",
        "format: cbor",
        "'cbor' is not one of",
    ),
    (
        "modbus-opt-on-mqtt",
        "endpoints.yml",
        "keepalive: 30s",
        "keepalive: 30s\n    baud: 9600",
        "baud: 9600",
        "unknown key 'baud'",
    ),
    (
        "tls-key-on-mqtt",
        "endpoints.yml",
        "keepalive: 30s",
        "keepalive: 30s\n    ca: ca.pem",
        "ca: ca.pem",
        "ca needs scheme mqtts",
    ),
    (
        "password-twice",
        "endpoints.yml",
        "keepalive: 30s",
        "keepalive: 30s\n    password: x\n    password_file: p",
        "password_file: p",
        "give password or password_file, not both",
    ),
    (
        "keepalive-range",
        "endpoints.yml",
        "keepalive: 30s",
        "keepalive: 2d",
        "keepalive: 2d",
        "keepalive must be 1s..65535s",
    ),
    (
        "backoff-order",
        "endpoints.yml",
        "{ base: 500ms, max: 30s }",
        "{ base: 1m, max: 30s }",
        "base: 1m",
        "backoff.base is larger",
    ),
    (
        "mqtt-driver-on-modbus-endpoint",
        "drivers.yml",
        "  endpoint_id: local_broker     # a second driver on the same client and session",
        "  endpoint_id: plc_tcp  # moved",
        "# moved",
        "proto mqtt needs an mqtt or mqtts endpoint; plc_tcp has scheme tcp",
        True,
    ),
    (
        "modbus-driver-on-mqtt-endpoint",
        "drivers.yml",
        "  endpoint_id: plc_tcp",
        "  endpoint_id: local_broker",
        "endpoint_id: local_broker\n",
        "proto modbus needs a Modbus endpoint; local_broker is an MQTT broker",
        True,
    ),
    (
        "mqtt-opt-on-modbus-endpoint",
        "endpoints.yml",
        "    timeout: 1000ms",
        "    timeout: 1000ms\n    client_id: x",
        "client_id: x",
        "unknown key 'client_id'",
        True,
    ),
    (
        "topic-on-modbus-tag",
        "variables.yml",
        "  driver_id: plc1\n",
        "  driver_id: plc1\n  topic: a/b\n",
        "topic: a/b",
        "topic is for MQTT source tags; driver plc1 is a Modbus driver",
        True,
    ),
    (
        "placeholder-on-modbus-tag",
        "variables.yml",
        "- tag: plant.flow_m3h",
        "- tag: plant.{1}.flow",
        "plant.{1}.flow",
        "placeholders like {1} are for MQTT source tags",
        True,
    ),
    (
        "modbus-tag-without-address",
        "variables.yml",
        "  address: { type: holding, addr: 0 }\n",
        "",
        "- tag: plant.flow_m3h",
        "missing required key 'address'",
        True,
    ),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_broken_mqtt_config_points_at_the_line(case: tuple, cfg: Make, capsys: pytest.CaptureFixture[str]) -> None:
    name, fname, old, new, needle, fragment, *mixed = case
    d = cfg({fname: (old, new)}, mixed=bool(mixed))
    with pytest.raises(ConfigError):
        load_snapshot(d)
    assert cli.main(["lint", str(d)]) == 1
    printed = capsys.readouterr().out.splitlines()
    want = f"{d / fname}:{line_of(d / fname, needle.rstrip(chr(10)))}: "
    assert any(line.startswith(want) and fragment in line for line in printed), (
        f"{name}: wanted {want}…{fragment}…; got:\n" + "\n".join(printed)
    )


WARNINGS = [
    (
        "overlapping-subscriptions",
        "drivers.yml",
        '- { filter: "meters/#", qos: 2 }',
        '- { filter: "meters/#", qos: 2 }\n      - { filter: "meters/hall/+", qos: 1 }',
        "meters/hall/+",
        "overlaps 'meters/#'",
    ),
    (
        "overlap-across-drivers",
        "drivers.yml",
        '- { filter: "meters/#", qos: 2 }',
        '- { filter: "meters/#", qos: 2 }\n      - { filter: "sensors/boiler/temp", qos: 0 }',
        "sensors/boiler/temp",
        "overlaps 'sensors/+/temp' of driver lab_sensors",
    ),
    (
        "partly-subscribed",
        "variables.yml",
        "topic: sensors/+/env",
        "topic: sensors/#",
        "topic: sensors/#",
        "deliver only part of 'sensors/#'",
    ),
    (
        "template-shadows-a-tag",
        "variables.yml",
        "- tag: lab.{1}.air_c",
        "- tag: lab.boiler.{1}",
        "lab.boiler.{1}",
        "can produce 'lab.boiler.temp_c'",
    ),
    ("no-client-id", "endpoints.yml", "    client_id: edge-01-src", "", "local_broker:", "no opts.client_id"),
    (
        "session-expiry-zero",
        "endpoints.yml",
        "session_expiry: 1h",
        "session_expiry: 0s",
        "session_expiry: 0s",
        "forgets",
    ),
]


@pytest.mark.parametrize("case", WARNINGS, ids=[c[0] for c in WARNINGS])
def test_suspicious_mqtt_config_warns_at_the_line(case: tuple, cfg: Make, capsys: pytest.CaptureFixture[str]) -> None:
    name, fname, old, new, needle, fragment = case
    d = cfg({fname: (old, new)})
    assert cli.main(["lint", str(d)]) == 0
    printed = capsys.readouterr().out.splitlines()
    want = f"{d / fname}:{line_of(d / fname, needle.rstrip(chr(10)))}: warning: "
    assert [line for line in printed if line.startswith(want) and fragment in line], (
        f"{name}: wanted {want}…{fragment}…; got:\n" + "\n".join(printed)
    )
    load_snapshot(d)
