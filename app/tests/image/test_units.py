"""The units as shipped: `systemd-analyze verify` passes and the service's exposure stays "OK" (<= 2.5).

Runs tools/image/check-units, the same script as `make systemd-check`, so the test and the make target
cannot drift apart. A weakened copy of the service must fail it, so the check is known to bite.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHECK = REPO / "tools" / "image" / "check-units"
SYSTEMD = REPO / "systemd"


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


def test_weakened_service_fails_the_check(tmp_path: Path) -> None:
    for unit in SYSTEMD.iterdir():
        if unit.suffix in {".service", ".sysusers", ".tmpfiles"}:
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
        if unit.suffix in {".service", ".sysusers", ".tmpfiles"}:
            shutil.copy(unit, tmp_path / unit.name)
    good = tmp_path / "edge-gateway-mark-good.service"
    good.write_text(good.read_text().replace("Type=oneshot", "Type=oneshot\nExecStartPost=/nonexistent/mark"))
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "FAIL: systemd-analyze verify" in result.stdout
