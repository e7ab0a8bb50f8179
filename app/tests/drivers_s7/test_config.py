"""S7 config: the sample lints, bad addresses are `file:line` errors, the builders' model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_gateway.drivers.s7 import codec
from edge_gateway.drivers.s7.plugin import PLUGIN

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[2] / "edge_gateway" / "drivers" / "s7" / "sample"


def _cfg(d: Path, variables: str | None = None, endpoints: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for f in SAMPLE.glob("*.yml"):
        shutil.copy(f, d / f.name)
    if variables is not None:
        (d / "variables.yml").write_text(variables)
    if endpoints is not None:
        (d / "endpoints.yml").write_text(endpoints)
    (d / "connector.yml").write_text("cloud: { kind: mqtt5, endpoint: 'tcp://127.0.0.1:1883', tenant: t, device: d }\n")
    (d / "gateway.yml").write_text(f"wal: {{ dir: {d / 'wal'} }}\ncontrol: {{ socket: {d / 'c.sock'} }}\n")
    return d


def _lint(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "edge-cfg"), "lint", str(d)], capture_output=True, text=True, check=False)


def test_the_sample_config_lints(tmp_path: Path) -> None:
    r = _lint(_cfg(tmp_path / "c"))
    assert r.returncode == 0, r.stdout + r.stderr


BAD = [
    ("{ area: DB, db: 10, start: 0, size: 2 }", "float32", "float32 is 4 bytes"),
    ("{ area: DB, db: 10, start: 0, bit: 3 }", "int16", "`bit` is only for datatype bool"),
    ("{ area: M, db: 10, start: 0 }", "int16", "`db` is only for area DB"),
    ("{ area: DB, start: 0 }", "int16", "area DB needs `db`"),
    ("{ area: DB, db: 1, start: 0 }", "bool", "a bool needs `bit`"),
    ("{ area: DB, db: 1, start: 0, bit: 1, size: 2 }", "bool", "a bool is one bit of one byte"),
    ("{ area: DB, db: 1, start: 0, size: 2 }", "string", "STRING needs size 3..256"),
    ("{ area: T, start: 0 }", "int16", "area"),
    ("{ area: DB, db: 1, start: 0, bit: 8 }", "bool", "bit"),
]


@pytest.mark.parametrize(("address", "datatype", "message"), BAD)
def test_bad_addresses_are_file_line_errors(tmp_path: Path, address: str, datatype: str, message: str) -> None:
    text = (
        f"- {{ tag: ok.one, driver_id: s7plc, datatype: int16, address: {{ area: DB, db: 10, start: 4 }} }}\n"
        f"- {{ tag: bad.one, driver_id: s7plc, datatype: {datatype}, address: {address} }}\n"
    )
    r = _lint(_cfg(tmp_path / "c", variables=text))
    assert r.returncode == 1, r.stdout
    assert "variables.yml:2:" in r.stdout and message in r.stdout, r.stdout
    assert "variables.yml:1:" not in r.stdout, r.stdout


def test_rack_slot_and_tsap_exclude_each_other(tmp_path: Path) -> None:
    ep = "plc_s7:\n  scheme: s7\n  host: 127.0.0.1\n  opts: { rack: 0, slot: 1, tsap: 0x0301 }\n"
    r = _lint(_cfg(tmp_path / "c", endpoints=ep))
    assert r.returncode == 1 and "endpoints.yml:1:" in r.stdout and "rack/slot or tsap" in r.stdout, r.stdout


def test_builders() -> None:
    ep = PLUGIN.build_endpoint("e", "s7", {"tsap": "03.01", "timeout": "500ms"})
    assert ep.tsap == 0x0301 and ep.timeout == 0.5
    assert PLUGIN.build_cfg("d", {}).polling == 1.0 and PLUGIN.build_cfg("d", {}).enable_write is False
    a = PLUGIN.build_address("t", "float32", {"area": "DB", "db": 10, "start": 4, "size": 4})
    assert a == codec.S7Address("DB", 10, 4, 4) and a.describe() == "DB10.DBB4"
    b = PLUGIN.build_address("t", "bool", {"area": "M", "start": 3, "bit": 7, "size": 1})
    assert b == codec.S7Address("M", 0, 3, 1, 7)


def test_codec_round_trips_the_s7_layout() -> None:
    cases = [
        ("float32", 21.5, b"\x41\xac\x00\x00"),
        ("int16", -2, b"\xff\xfe"),
        ("int32", -70000, (-70000).to_bytes(4, "big", signed=True)),
        ("uint16", 0xBEEF, b"\xbe\xef"),
        ("uint32", 0xDEADBEEF, b"\xde\xad\xbe\xef"),
    ]
    for dt, value, raw in cases:
        a = codec.build(dt, {"area": "DB", "db": 1, "start": 0})
        assert codec.encode(dt, a, value) == raw and codec.decode(dt, a, raw) == value
    s = codec.build("string", {"area": "DB", "db": 1, "start": 0, "size": 8})
    assert codec.encode("string", s, "abc") == b"\x06\x03abc\x00\x00\x00"
    assert codec.decode("string", s, b"\x06\x03abcxyz") == "abc"
    bit = codec.build("bool", {"area": "DB", "db": 1, "start": 0, "bit": 5})
    assert codec.decode("bool", bit, b"\x20") is True and codec.decode("bool", bit, b"\xdf") is False
    for dt, bad in (("int16", 40000), ("int16", 1.5), ("float32", "x"), ("bool", 2)):
        with pytest.raises(ValueError):
            codec.encode(dt, codec.build(dt, {"area": "DB", "db": 1, "start": 0, "bit": 0} if dt == "bool" else
                                         {"area": "DB", "db": 1, "start": 0}), bad)  # fmt: skip
    with pytest.raises(ValueError, match="do not fit"):
        codec.encode("string", s, "abcdefg")


def test_writes_go_through_the_inverse_of_the_scale() -> None:
    from edge_gateway.config.expr import compile_scale
    from edge_gateway.core.driver import TagItem
    from edge_gateway.drivers.s7.plugin import raw_value

    addr = codec.build("int16", {"area": "DB", "db": 1, "start": 0})
    t = TagItem("t", "d", "RW", "int16", addr, compile_scale("value / 10"))
    assert raw_value(t, 21.5) == 215 and raw_value(t, True) is True
    with pytest.raises(ValueError):
        raw_value(TagItem("t", "d", "RW", "int16", addr, compile_scale("value ** 2")), 4.0)
