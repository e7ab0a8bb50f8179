"""The units as shipped: `systemd-analyze verify` passes and the service's exposure stays "OK" (<= 2.5).

Runs tools/image/check-units, the same script as `make systemd-check`, so the test and the make target
cannot drift apart. A weakened copy of the service must fail it, so the check is known to bite.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..runtime.plant import Plant

REPO = Path(__file__).resolve().parents[3]
CHECK = REPO / "tools" / "image" / "check-units"
SYSTEMD = REPO / "systemd"
BIN = Path(sys.executable).parent


OVERLAY_UNITS = REPO / "rootfs-overlay" / "etc" / "systemd" / "system"


def _check(*units_dirs: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(CHECK), *map(str, units_dirs)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_units_verify_and_rate_ok() -> None:
    result = _check(SYSTEMD, OVERLAY_UNITS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemd-check: OK" in result.stdout
    assert "edge-gateway.service:" in result.stdout and " OK " in result.stdout
    assert "data.mount" in result.stdout and "etc-edge\\x2dgateway.mount" in result.stdout


def test_service_keeps_the_contract() -> None:
    text = (SYSTEMD / "edge-gateway.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "User=edge-gateway",
        "SupplementaryGroups=dialout",
        "StateDirectory=edge-gateway",
        "RuntimeDirectory=edge-gateway",
        "ConfigurationDirectory=edge-gateway",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "ExecStart=/usr/bin/edge-gateway run --config /etc/edge-gateway",
    ):
        assert f"\n{line}\n" in text, line
    assert "\nDynamicUser=" not in text
    assert "kill -HUP" not in text  # SIGHUP only queues a reload: systemctl would report success for anything


def _directives(unit: str) -> dict[str, list[str]]:
    """`Section.Key` → every value, in order (comments and blank lines left out)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in (SYSTEMD / unit).read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def _exec_reload(run_dir: Path) -> list[str]:
    """The service's ExecReload= as systemd runs it: %t = the runtime directory root, /usr/bin = the venv."""
    (line,) = _directives("edge-gateway.service")["Service.ExecReload"]
    argv = [a.replace("%t", str(run_dir)) for a in shlex.split(line)]
    assert argv[0].startswith("/usr/bin/")
    return [str(BIN / argv[0].removeprefix("/usr/bin/")), *argv[1:]]


def test_exec_reload_uses_the_appliance_control_socket() -> None:
    argv = _exec_reload(Path("/run"))
    assert argv[0] == str(BIN / "edge-ctl") and argv[-1] == "reload"
    appliance = yaml.safe_load((REPO / "rootfs-overlay/etc/edge-gateway/gateway.yml").read_text())
    assert argv[argv.index("--socket") + 1] == appliance["control"]["socket"] == "/run/edge-gateway/control.sock"
    assert "RuntimeDirectory=edge-gateway" in (SYSTEMD / "edge-gateway.service").read_text()


NEW_TAG = """
- tag: plant.level_raw
  driver_id: plc1
  address: { type: holding, addr: 30 }
  datatype: uint16
"""


def test_exec_reload_waits_for_the_outcome(tmp_path: Path) -> None:
    """`systemctl reload` runs ExecReload=: it must return when the reload is done and fail when it was refused."""
    run_dir = tmp_path / "run"
    (run_dir / "edge-gateway").mkdir(parents=True)
    reload = _exec_reload(run_dir)
    plant = Plant(tmp_path)
    try:
        socket_path = str(run_dir / "edge-gateway" / "control.sock")
        plant.edit("gateway.yml", (plant.control, socket_path))
        plant.control = socket_path
        plant.start_gateway()
        plant.wait_ready()
        before = plant.ctl("status")["revision"]

        plant.edit("variables.yml", append=NEW_TAG)
        done = subprocess.run(reload, capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        status = plant.ctl("status")  # already the new revision when the command has returned
        assert status["revision"] != before and status["last_reload"]["applied"] is True
        applied = status["revision"]

        plant.edit("variables.yml", ("driver_id: meter2", "driver_id: meter9"))
        refused = subprocess.run(reload, capture_output=True, text=True, timeout=90, check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "invalid configuration" in refused.stdout and "meter9" in refused.stdout, refused.stdout
        assert plant.ctl("status")["revision"] == applied
    finally:
        plant.stop()

    gone = subprocess.run(reload, capture_output=True, text=True, timeout=90, check=False)
    assert gone.returncode == 2 and "no gateway on" in gone.stderr


def test_mark_good_is_a_timer_after_ready_not_a_sleep_in_the_boot() -> None:
    timer = _directives("edge-gateway-mark-good.timer")
    service = _directives("edge-gateway-mark-good.service")
    assert timer["Timer.OnActiveSec"] == ["60s"] and timer["Timer.AccuracySec"] == ["1s"]
    assert timer["Timer.Unit"] == ["edge-gateway-mark-good.service"]
    # Started once the gateway's start job is done (Type=notify: at READY=1), so the grace counts from there.
    assert "edge-gateway.service" in " ".join(timer["Unit.After"]).split()
    assert timer["Install.WantedBy"] == ["multi-user.target"]
    # The oneshot is no longer part of the boot transaction and sleeps nowhere.
    assert not [k for k in service if k.startswith("Install.")]
    assert not any("sleep" in v for k, vs in service.items() if k.startswith("Service.Exec") for v in vs)
    assert service["Service.ExecStart"] == ["rauc status mark-good"]
    assert service["Unit.Requisite"] == ["edge-gateway.service"]
    preset = (REPO / "rootfs-overlay/usr/lib/systemd/system-preset/50-edge-gateway.preset").read_text()
    assert "\nenable edge-gateway-mark-good.timer\n" in preset
    assert "edge-gateway-mark-good.service" not in preset


def test_every_unit_is_installed_by_the_package_and_by_make_image() -> None:
    mk = (REPO / "buildroot/package/python-edge-gateway/python-edge-gateway.mk").read_text()
    build = (REPO / "tools/image/build-image").read_text()
    units = sorted(u.name for u in SYSTEMD.iterdir() if u.suffix in {".service", ".timer"})
    assert units == [
        "edge-gateway-mark-good.service",
        "edge-gateway-mark-good.timer",
        "edge-gateway.service",
    ]
    for unit in units:
        assert f"$(PYTHON_EDGE_GATEWAY_UNITS_DIR)/{unit}" in mk, unit
        assert unit in build, unit


def test_weakened_service_fails_the_check(tmp_path: Path) -> None:
    for unit in SYSTEMD.iterdir():
        if unit.suffix in {".service", ".timer", ".sysusers", ".tmpfiles"}:
            shutil.copy(unit, tmp_path / unit.name)
    svc = tmp_path / "edge-gateway.service"
    weak = [
        ln
        for ln in svc.read_text().splitlines()
        if not ln.startswith(("ProtectSystem=", "CapabilityBoundingSet=", "SystemCallFilter=", "ProtectKernel"))
    ]
    svc.write_text("\n".join(weak) + "\n")
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "FAIL: exposure" in result.stdout


def test_broken_unit_fails_verify(tmp_path: Path) -> None:
    for unit in SYSTEMD.iterdir():
        if unit.suffix in {".service", ".timer", ".sysusers", ".tmpfiles"}:
            shutil.copy(unit, tmp_path / unit.name)
    good = tmp_path / "edge-gateway-mark-good.service"
    good.write_text(good.read_text().replace("Type=oneshot", "Type=oneshot\nExecStartPost=/nonexistent/mark"))
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "FAIL: systemd-analyze verify" in result.stdout
