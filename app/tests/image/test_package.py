"""The package as users and the image meet it: `python -m edge_gateway` is the `edge-gateway` CLI, and the
version is written once (edge_gateway.__version__), which pyproject.toml, Buildroot and the image read."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

import edge_gateway

APP = Path(__file__).resolve().parents[2]
REPO = APP.parent
SCRIPTS = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False, cwd=APP)


def test_python_m_edge_gateway_is_the_console_script() -> None:
    as_module = _run(sys.executable, "-m", "edge_gateway", "--version")
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout.strip() == f"edge-gateway {edge_gateway.__version__}"
    helps = [_run(sys.executable, "-m", "edge_gateway", "--help"), _run(str(SCRIPTS / "edge-gateway"), "--help")]
    assert [h.returncode for h in helps] == [0, 0]
    assert helps[0].stdout == helps[1].stdout and "usage: edge-gateway" in helps[0].stdout
    bad = _run(sys.executable, "-m", "edge_gateway", "no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    scripts = tomllib.loads((APP / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["edge-gateway"] == "edge_gateway.runtime.cli:main"
    assert "from edge_gateway.runtime.cli import main" in (APP / "edge_gateway" / "__main__.py").read_text()


def test_version_is_written_once(tmp_path: Path) -> None:
    project = tomllib.loads((APP / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    written = [
        p
        for p in (APP / "edge_gateway").rglob("*.py")
        if re.search(r'^__version__ = "', p.read_text(), re.M) or re.search(r'^version = "', p.read_text(), re.M)
    ]
    assert written == [APP / "edge_gateway" / "__init__.py"]
    # The build backend takes the version from __init__.py (statically: nothing is imported), so changing it
    # there changes the distribution's version.
    copy = tmp_path / "app"
    shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("tests", "*.egg-info", "build", "__pycache__"))
    init = copy / "edge_gateway" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{edge_gateway.__version__}"', '__version__ = "9.8.7"'))
    assert read_configuration(copy / "pyproject.toml", expand=True)["project"]["version"] == "9.8.7"
    here = read_configuration(APP / "pyproject.toml", expand=True)["project"]["version"]
    assert here == edge_gateway.__version__


def test_buildroot_package_version_is_the_app_s() -> None:
    mk = (REPO / "buildroot/package/python-edge-gateway/python-edge-gateway.mk").read_text()
    assert re.search(r"^PYTHON_EDGE_GATEWAY_VERSION = (\S+)$", mk, re.M)[1] == edge_gateway.__version__  # type: ignore[index]
