"""The parent unpickles the child's answer (config/isolated.py) admitting the model only: every class a
real Snapshot is made of, and none of the rest of edge_gateway."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.config import isolated
from edge_gateway.config.loader import _Build, load_snapshot
from edge_gateway.config.model import EtcdSourceCfg
from edge_gateway.config.problems import Problem
from edge_gateway.core.driver import BaseDriver
from edge_gateway.drivers.modbus import line, plugin
from edge_gateway.runtime.gateway import Gateway

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = [ROOT / "config", ROOT / "config/examples/mqtt-source", ROOT / "rootfs-overlay/etc/edge-gateway"]
SAMPLES = [ROOT / "app/edge_gateway/drivers/opcua/examples", ROOT / "app/edge_gateway/drivers/s7/sample"]


def roundtrip(value: Any) -> Any:
    return isolated._Unpickler(io.BytesIO(pickle.dumps(("value", value), protocol=pickle.HIGHEST_PROTOCOL))).load()[1]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_class_of_a_real_snapshot_is_admitted(cfg: Path) -> None:
    snap = load_snapshot(cfg)
    assert roundtrip(snap) == snap


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_the_model_classes_of_each_driver_plugin_are_admitted(sample: Path, tmp_path: Path) -> None:
    """The OPC UA and S7 samples keep their model in their plugin's package (config.py, plugin.py, codec.py)."""
    cfg = shutil.copytree(sample, tmp_path / "cfg")
    shutil.copy(ROOT / "config/connector.yml", cfg)
    snap = load_snapshot(cfg)
    assert snap.plugin_tags and roundtrip(snap) == snap


def test_a_store_source_and_problems_are_admitted() -> None:
    store = EtcdSourceCfg(url="etcd://127.0.0.1:2379/gw", metrics_listen=("127.0.0.1", 9100))
    assert roundtrip(store) == store
    problems = [Problem("variables.yml", 3, 5, "error", "unknown driver_id 'x'")]
    assert roundtrip(problems) == problems


@pytest.mark.parametrize(
    "cls",
    [Gateway, BaseDriver, _Build, type(plugin.PLUGIN), line.ModbusLine, line.WriteError],
    ids=lambda c: f"{c.__module__}.{c.__qualname__}",
)
def test_another_edge_gateway_class_is_refused(cls: type) -> None:
    """A class of edge_gateway that is not a model record: named in a pickle, it is not even looked up."""
    with pytest.raises(pickle.UnpicklingError, match="not a model class"):
        roundtrip(cls)
