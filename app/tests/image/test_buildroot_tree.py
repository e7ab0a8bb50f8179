"""The BR2_EXTERNAL tree agrees with the app and with itself: versions, dependencies, file references,
slot layout. (`make buildroot-check` runs it through a real Buildroot; these checks need none.)"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path

import edge_gateway

REPO = Path(__file__).resolve().parents[3]
BR = REPO / "buildroot"
BOARDS = {
    "rpi4": ("edge_gateway_rpi4_64_defconfig", "mmcblk0p"),
    "qemu-aarch64": ("edge_gateway_qemu_aarch64_virt_defconfig", "vda"),
}
# PyPI name -> Buildroot package
BR_NAMES = {
    "minimalmodbus": "python-minimalmodbus",
    "pymodbus": "python-pymodbus",
    "pyserial": "python-serial",
    "paho-mqtt": "python-paho-mqtt",
    "zstandard": "python-zstandard",
    "prometheus-client": "python-prometheus-client",
    "pyyaml": "python-pyyaml",
    "jsonschema": "python-jsonschema",
    "sdnotify": "python-sdnotify",
    "python-snap7": "python-snap7",
    "asyncua": "python-opcua-asyncio",
    "etcd3gw": "python-etcd3gw",
}


def _mk_var(package: str, var: str) -> str:
    text = (BR / "package" / package / f"{package}.mk").read_text()
    match = re.search(rf"^{var} = (.+)$", text, re.M)
    assert match, (package, var)
    return match.group(1)


def _pins() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return {n.lower(): v for n, v in (ln.split("==") for ln in lines if "==" in ln and not ln.startswith("#"))}


def test_external_tree_names_itself_and_includes_every_package() -> None:
    assert (BR / "external.desc").read_text().startswith("name: EDGE_GATEWAY\n")
    config_in = (BR / "Config.in").read_text()
    for package in sorted(p.name for p in (BR / "package").iterdir()):
        assert f"$BR2_EXTERNAL_EDGE_GATEWAY_PATH/package/{package}/Config.in" in config_in
    assert "package/*/*.mk" in (BR / "external.mk").read_text()


def test_app_package_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "app/pyproject.toml").read_text())["project"]
    assert _mk_var("python-edge-gateway", "PYTHON_EDGE_GATEWAY_VERSION") == edge_gateway.__version__
    assert _mk_var("python-edge-gateway", "PYTHON_EDGE_GATEWAY_SETUP_TYPE") == "setuptools"
    selects = re.findall(
        r"select BR2_PACKAGE_(\w+) # runtime", (BR / "package/python-edge-gateway/Config.in").read_text()
    )
    wanted = {re.split(r"[<>=!~ ]", dep)[0].lower() for dep in project["dependencies"]}
    assert {BR_NAMES[name].upper().replace("-", "_") for name in wanted} == set(selects)


def test_added_packages_are_pinned_like_the_lock_file() -> None:
    pins = _pins()
    assert _mk_var("python-zstandard", "PYTHON_ZSTANDARD_VERSION") == pins["zstandard"]
    assert _mk_var("python-prometheus-client", "PYTHON_PROMETHEUS_CLIENT_VERSION") == pins["prometheus-client"]
    assert _mk_var("python-snap7", "PYTHON_SNAP7_VERSION") == pins["python-snap7"]
    assert _mk_var("python-etcd3gw", "PYTHON_ETCD3GW_VERSION") == pins["etcd3gw"]
    assert _mk_var("python-futurist", "PYTHON_FUTURIST_VERSION") == pins["futurist"]
    assert _mk_var("python-debtcollector", "PYTHON_DEBTCOLLECTOR_VERSION") == pins["debtcollector"]
    for package, source in (
        ("python-zstandard", "zstandard"),
        ("python-prometheus-client", "prometheus_client"),
        ("python-snap7", "python_snap7"),
        ("python-etcd3gw", "etcd3gw"),
        ("python-futurist", "futurist"),
        ("python-debtcollector", "debtcollector"),
    ):
        hashes = (BR / "package" / package / f"{package}.hash").read_text()
        assert re.search(rf"^sha256  [0-9a-f]{{64}}  {source}-[0-9.]+\.tar\.gz$", hashes, re.M)


def test_defconfigs_have_the_appliance_and_reference_existing_files() -> None:
    for board, (name, _) in BOARDS.items():
        lines = (BR / "configs" / name).read_text().splitlines()
        for line in (
            "BR2_REPRODUCIBLE=y",
            "BR2_INIT_SYSTEMD=y",
            "BR2_PACKAGE_PYTHON3=y",
            "BR2_PACKAGE_RAUC=y",
            "BR2_PACKAGE_PYTHON_EDGE_GATEWAY=y",
            "BR2_TARGET_ROOTFS_SQUASHFS=y",
            'BR2_ROOTFS_OVERLAY="$(BR2_EXTERNAL_EDGE_GATEWAY_PATH)/../rootfs-overlay"',
            f'BR2_ROOTFS_POST_SCRIPT_ARGS="{board}"',
        ):
            assert line in lines, (name, line)
        for ref in re.findall(r"\$\(BR2_EXTERNAL_EDGE_GATEWAY_PATH\)/([^\" ]+)", "\n".join(lines)):
            assert (BR / ref).exists(), (name, ref)


def test_slots_agree_across_rauc_boot_script_and_partition_table() -> None:
    genimage = (BR / "board/edge-gateway/common/genimage.cfg").read_text()
    order = re.findall(r"^\tpartition (\S+) \{", genimage, re.M)
    assert order == ["boot", "rootfs-a", "rootfs-b", "data"]
    for board, (_, disk) in BOARDS.items():
        system = (BR / "board/edge-gateway" / board / "system.conf").read_text()
        assert f"compatible=edge-gateway-{board}" in system
        assert re.findall(r"device=/dev/(\S+)\nbootname=(\w)", system.replace("type=raw\n", "")) == [
            (f"{disk}2", "A"),
            (f"{disk}3", "B"),
        ]
        script = (BR / "board/edge-gateway" / board / "boot.cmd").read_text()
        assert f"root=/dev/{disk}2 rauc.slot=A" in script and f"root=/dev/{disk}3 rauc.slot=B" in script
        assert "BOOT_A_LEFT" in script and "saveenv" in script


def test_boot_script_image_header(tmp_path: Path) -> None:
    out = tmp_path / "boot.scr"
    env = {"SOURCE_DATE_EPOCH": "1767225600"}
    cmd = BR / "board/edge-gateway/rpi4/boot.cmd"
    subprocess.run([sys.executable, str(REPO / "tools/image/mkbootscr.py"), str(cmd), str(out)], env=env, check=True)
    blob = out.read_bytes()
    magic, hcrc, stamp, size, _load, _ep, dcrc = struct.unpack(">7I", blob[:28])
    assert (magic, stamp, size) == (0x27051956, 1767225600, len(blob) - 64)
    assert blob[28:32] == bytes([5, 22, 6, 0])  # Linux, arm64, script, uncompressed
    assert zlib.crc32(blob[:4] + b"\0\0\0\0" + blob[8:64]) == hcrc
    assert zlib.crc32(blob[64:]) == dcrc
    assert struct.unpack(">II", blob[64:72]) == (len(cmd.read_bytes()), 0) and blob[72:] == cmd.read_bytes()
    missing = subprocess.run(
        [sys.executable, str(REPO / "tools/image/mkbootscr.py"), str(cmd), str(out)],
        env={},
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "SOURCE_DATE_EPOCH" in missing.stderr
