"""The loader: defaults, units, Modicon refs, resolved orders and paths, revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_gateway.config.loader import lint, load_snapshot
from edge_gateway.config.units import parse_duration, parse_rate, parse_size
from edge_gateway.drivers.modbus.config import modicon

from .conftest import DEMO


def test_demo_snapshot() -> None:
    s = load_snapshot(DEMO)
    assert set(s.plugin_endpoints) == {"plc_tcp", "rs485_0", "plant_ua", "plc_s7"}
    rs = s.plugin_endpoints["rs485_0"]
    assert rs.is_serial and rs.rtu_framing and rs.baud == 19200 and rs.parity == "E"
    assert rs.timeout == 0.3 and rs.rate == 50.0 and rs.turnaround == pytest.approx(0.005)
    assert rs.host == str((DEMO / "../build/demo/ttyGW").resolve())
    assert s.plugin_endpoints["plc_tcp"].port == 15020 and not s.plugin_endpoints["plc_tcp"].rtu_framing
    assert [d.id for d in s.devices_on("rs485_0")] == ["meter1", "meter2"]
    m2 = s.plugin_devices["meter2"].modbus
    assert (m2.unit_id, m2.polling, m2.retry, m2.max_regs_per_req, m2.word_order) == (
        2,
        1.0,
        2,
        120,
        "little",
    )
    v = s.tag("meter2.voltage_v")
    assert v is not None and v.word_order == "little" and v.endian == "big"
    runtime = s.tag("plant.runtime_s")
    assert runtime is not None and (runtime.address.type, runtime.address.addr, runtime.address.len) == (
        "holding",
        6,
        2,
    )
    name = s.tag("plant.batch_name")
    assert name is not None and name.address.len == 4
    pump = s.tag("plant.pump_on")
    assert pump is not None and pump.writable and pump.address.len == 1
    flow = s.tag("plant.flow_m3h")
    assert flow is not None and flow.scale is not None and flow.scale(123) == pytest.approx(12.3)
    c = s.connectors["mqtt_cloud"]
    assert (c.scheme, c.host, c.port, c.qos, c.batch, c.max_bytes) == (
        "tcp",
        "127.0.0.1",
        18830,
        2,
        32,
        1 << 20,
    )
    assert c.session_expiry == 86400 and c.backoff.base == 0.5 and c.backoff.max == 120
    g = s.gateway
    assert g.wal.dir == str((DEMO / "../build/demo/wal").resolve()) and g.wal.max_bytes == 1 << 30
    assert (g.metrics_host, g.metrics_port) == ("127.0.0.1", 9108)
    assert len(s.revision) == 12


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yml").write_text("p:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 502\n")
    (tmp_path / "drivers.yml").write_text("d:\n  endpoint_id: p\n  proto: modbus\n  cfg: { unit_id: 1 }\n")
    (tmp_path / "variables.yml").write_text("- tag: t\n  driver_id: d\n  address: { ref: 30001 }\n  datatype: int16\n")
    (tmp_path / "connector.yml").write_text("c:\n  kind: mqtt5\n  endpoint: tls://broker\n  tenant: a\n  device: b\n")
    s = load_snapshot(tmp_path)
    assert s.plugin_endpoints["p"].timeout == 1.0 and s.plugin_endpoints["p"].rate is None
    assert s.plugin_devices["d"].kind == "static" and s.plugin_devices["d"].modbus.polling == 1.0
    v = s.plugin_tags[0]
    assert (v.access, v.address.type, v.address.addr, v.address.len, v.scale) == ("R", "input", 0, 1, None)
    c = s.connectors["c"]
    assert (c.port, c.client_id, c.qos, c.compression) == (8883, "b", 2, "zstd")
    assert c.tls is not None and c.tls.ca is None
    assert c.cmd_topic == "/edge/{tenant}/{device}/cmd/{tag}"
    assert s.gateway.wal.dir == "/var/lib/edge-gateway/wal" and s.gateway.bus.capacity == 65536


def test_revision_follows_content(tmp_path: Path, demo_copy) -> None:
    a, b = demo_copy(name="a"), demo_copy(name="b")
    assert load_snapshot(a).revision == load_snapshot(b).revision
    (b / "drivers.yml").write_text((b / "drivers.yml").read_text() + "\n# comment\n")
    assert load_snapshot(a).revision != load_snapshot(b).revision


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        (1, ("coil", 0)),
        (9999, ("coil", 9998)),
        (10001, ("discrete", 0)),
        (30001, ("input", 0)),
        (40001, ("holding", 0)),
        (49999, ("holding", 9998)),
        (400001, ("holding", 0)),
        (465536, ("holding", 65535)),
        (365536, ("input", 65535)),
        ("065536", ("coil", 65535)),
        (20001, None),
        (40000, None),
        (465537, None),
        (0, None),
        ("4x001", None),
    ],
)
def test_modicon(ref, want) -> None:
    assert modicon(ref) == want


def test_units() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration("1d") == 86400
    assert parse_duration("1.5s") == 1.5
    assert parse_size("16MiB") == 16 << 20 and parse_size("512M") == 512 << 20 and parse_size("1GB") == 10**9
    assert parse_size(4096) == 4096
    assert parse_rate("50pps") == 50.0
    for bad, fn in (
        ("5 s", parse_duration),
        ("1y", parse_duration),
        ("16mb", parse_size),
        ("5/s", parse_rate),
    ):
        with pytest.raises(ValueError):
            fn(bad)


def test_paths_resolve_against_the_config_directory(tmp_path: Path, demo_copy) -> None:
    d = demo_copy(
        {
            "connector.yml": (
                "endpoint: tcp://127.0.0.1:18830",
                "endpoint: tls://broker.example.com\n  password_file: secrets/mqtt.pass\n"
                "  tls: { ca: certs/ca.pem, client_cert: /abs/edge.crt, client_key: certs/edge.key }",
            ),
            "gateway.yml": ("listen: 127.0.0.1:9108", "listen: '[::1]:9200'"),
        }
    )
    (d / "secrets").mkdir()
    (d / "secrets/mqtt.pass").write_text("s3cret\n")  # lint checks that a password file exists
    s = load_snapshot(d)
    c = s.connectors["mqtt_cloud"]
    assert (c.scheme, c.host, c.port) == ("tls", "broker.example.com", 8883)
    assert c.password_file == str(d / "secrets/mqtt.pass")
    assert c.tls is not None and (c.tls.ca, c.tls.client_cert, c.tls.client_key) == (
        str(d / "certs/ca.pem"),
        "/abs/edge.crt",
        str(d / "certs/edge.key"),
    )
    assert s.gateway.control_socket == str((d / "../build/demo/control.sock").resolve())
    assert (s.gateway.metrics_host, s.gateway.metrics_port) == ("::1", 9200)


def test_len_defaults_from_the_datatype_and_the_table(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yml").write_text("p: { scheme: tcp, host: 127.0.0.1, port: 502 }\n")
    (tmp_path / "drivers.yml").write_text(
        "d: { endpoint_id: p, proto: modbus, cfg: { unit_id: 1, endian: little, word_order: little } }\n"
    )
    (tmp_path / "variables.yml").write_text(
        "- { tag: a, driver_id: d, address: { ref: 400101 }, datatype: float64 }\n"
        "- { tag: b, driver_id: d, address: { ref: '00003' }, datatype: bool }\n"
        "- { tag: c, driver_id: d, address: { ref: 10001 }, datatype: bool }\n"
        "- { tag: e, driver_id: d, address: { type: input, addr: 7 }, datatype: uint64, endian: big }\n"
    )
    (tmp_path / "connector.yml").write_text("c: { kind: mqtt5, endpoint: 'tcp://h', tenant: t, device: d }\n")
    s = load_snapshot(tmp_path)
    got = {v.tag: (v.address.type, v.address.addr, v.address.len, v.endian, v.word_order) for v in s.plugin_tags}
    assert got == {
        "a": ("holding", 100, 4, "little", "little"),
        "b": ("coil", 2, 1, "little", "little"),
        "c": ("discrete", 0, 1, "little", "little"),
        "e": ("input", 7, 4, "big", "little"),
    }
    assert s.connectors["c"].port == 1883 and s.connectors["c"].tls is None


def test_empty_and_missing_gateway_file(tmp_path: Path, demo_copy) -> None:
    d = demo_copy()
    (d / "gateway.yml").unlink()
    assert load_snapshot(d).gateway.metrics_port == 9100  # gateway.yml is optional
    (d / "variables.yml").write_text("# no tags yet\n")
    assert load_snapshot(d).plugin_tags == ()


def test_merge_keys_work_and_hostile_yaml_is_refused(demo_copy, monkeypatch) -> None:
    from edge_gateway.config import source

    d = demo_copy(
        {
            "drivers.yml": (
                "meter1:\n  kind: static\n  endpoint_id: rs485_0\n  proto: modbus\n  cfg: { unit_id: 1,",
                "meter1: &meter\n  kind: static\n  endpoint_id: rs485_0\n  proto: modbus\n  cfg: { unit_id: 1,",
            )
        }
    )
    (d / "drivers.yml").write_text(
        (d / "drivers.yml").read_text() + "meter3:\n  <<: *meter\n  cfg: { unit_id: 3, polling: 2s }\n"
    )
    assert load_snapshot(d).plugin_devices["meter3"].modbus.polling == 2.0
    gw = d / "gateway.yml"
    base = gw.read_text()
    monkeypatch.setattr(source, "MAX_NODES", 10_000)
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 10)}]\n" for i in range(6))
    for extra, want in (
        ("x: &a [*a]\n", "recursive alias"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 32 levels"),
        (bomb, "more than 10000 nodes"),
    ):
        gw.write_text(base + extra)
        problems = lint(d)
        assert [p.file for p in problems] == [str(gw)] and want in problems[0].message, problems
