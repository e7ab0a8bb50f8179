"""The configuration is read and validated in a child process (config/isolated.py): the gateway's own
heap never holds PyYAML, jsonschema or a file's node tree. Problems still come back as `file:line:
message`, at start and on reload; a refused reload changes nothing; a child that hangs is killed by its
PID and the load fails saying so."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_gateway.config import isolated
from edge_gateway.config.loader import lint, load_snapshot
from edge_gateway.config.problems import ConfigError
from edge_gateway.runtime.reload import Reloader

from .plant import BIN, ROOT, Plant
from .test_reload import StubGateway, edge_ctl

# Loaded only with PyYAML (its libyaml binding, always tried by `import yaml`) or jsonschema (referencing,
# which it always imports, sits on rpds): a process that maps neither imported neither.
LOADER_LIBRARIES = ("/yaml/_yaml.", "/rpds/rpds.")


def config_copy(tmp_path: Path) -> Path:
    return shutil.copytree(ROOT / "config", tmp_path / "cfg", ignore=shutil.ignore_patterns("examples", "README.md"))


def break_driver_id(cfg: Path) -> None:
    p = cfg / "variables.yml"
    text = p.read_text()
    assert "driver_id: meter2" in text
    p.write_text(text.replace("driver_id: meter2", "driver_id: meter9", 1))


def hanging_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every Python child started from now on hangs at startup (a sitecustomize on PYTHONPATH that writes
    its PID and sleeps), as a loader stuck on an unreadable mount or a blocking plugin import would."""
    site = tmp_path / "site"
    site.mkdir()
    pid_file = tmp_path / "child.pid"
    (site / "sitecustomize.py").write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(3600)\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return pid_file


def test_the_child_builds_the_same_snapshot_as_the_loader() -> None:
    assert isolated.load_snapshot(ROOT / "config") == load_snapshot(ROOT / "config")


@pytest.mark.parametrize("obj", [os.system, load_snapshot, print])
def test_the_parent_unpickles_model_classes_only(obj: object) -> None:
    with pytest.raises(pickle.UnpicklingError, match="not a model class"):
        isolated._Unpickler(io.BytesIO(pickle.dumps(("value", obj)))).load()


def test_a_config_error_at_start_is_reported_file_line_through_the_child(tmp_path: Path) -> None:
    cfg = config_copy(tmp_path)
    break_driver_id(cfg)
    r = subprocess.run(
        [str(BIN / "edge-gateway"), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stdout + r.stderr
    expected = [str(p) for p in lint(cfg) if p.is_error]
    assert expected and any("variables.yml:" in e and "meter9" in e for e in expected)
    assert r.stderr.splitlines() == expected


def test_a_reload_the_child_refuses_keeps_the_running_config(tmp_path: Path) -> None:
    cfg = config_copy(tmp_path)
    gateway = StubGateway()  # no outcome scripted: an apply would fail the test
    rl = Reloader(gateway, str(cfg), poll=0.05, watch_files=False)  # type: ignore[arg-type]
    break_driver_id(cfg)
    rl.start()
    try:
        answer = rl.request("SIGHUP").result(timeout=60)
    finally:
        rl.stop()
    assert answer["result"] == "invalid" and not answer["applied"]
    assert answer["problems"] == [str(p) for p in lint(cfg) if p.is_error]
    assert gateway.snapshot.revision == "0123456789ab"


def test_a_hanging_child_is_killed_by_its_pid_and_the_load_fails_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = hanging_child(tmp_path, monkeypatch)
    with pytest.raises(isolated.LoadFailed, match=r"did not answer within 2 s and was killed") as e:
        isolated.load_snapshot(ROOT / "config", timeout=2.0)
    pid = int(pid_file.read_text())
    assert f"pid {pid}" in str(e.value)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped


def test_a_reload_whose_child_hangs_is_refused_and_the_thread_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging_child(tmp_path, monkeypatch)
    monkeypatch.setattr(isolated, "TIMEOUT", 2.0)
    rl = Reloader(StubGateway(), str(config_copy(tmp_path)), poll=0.05, watch_files=False)  # type: ignore[arg-type]
    rl.start()
    try:
        answer = rl.request("SIGHUP").result(timeout=60)
        assert rl.is_alive()
    finally:
        rl.stop()
    assert answer["result"] == "invalid"
    assert "configuration loader" in answer["problems"][0] and "was killed" in answer["problems"][0]


def test_a_problem_from_the_child_is_a_config_error_with_its_lines(tmp_path: Path) -> None:
    cfg = config_copy(tmp_path)
    break_driver_id(cfg)
    with pytest.raises(ConfigError) as e:
        isolated.load_snapshot(cfg)
    assert [str(p) for p in e.value.problems] == [str(p) for p in lint(cfg) if p.is_error]


def test_the_running_gateway_never_loads_yaml_or_jsonschema(plant: Plant) -> None:
    """Through start, a reload that applies and one that is refused: the process maps neither library."""
    plant.start_gateway()
    plant.wait_ready()
    revision = plant.ctl("status")["revision"]
    assert plant.ctl("reload")["result"] == "unchanged"
    plant.edit("variables.yml", ("driver_id: meter2", "driver_id: meter9"))
    refused = edge_ctl(plant, "reload")
    assert refused.returncode == 1 and "variables.yml:" in refused.stdout and "meter9" in refused.stdout
    assert plant.ctl("status")["revision"] == revision
    assert plant.gw is not None and plant.gw.poll() is None
    maps = Path(f"/proc/{plant.gw.pid}/maps").read_text()
    assert [lib for lib in LOADER_LIBRARIES if lib in maps] == []
    here = Path("/proc/self/maps").read_text()  # this test process has loaded both: the check sees them
    assert [lib for lib in LOADER_LIBRARIES if lib in here] == list(LOADER_LIBRARIES)
