"""`make image` end to end: the staged root after post-build.sh, sdcard.img, the signed bundle, and a second
build with the same SOURCE_DATE_EPOCH giving the same bytes.

One build (module fixture) serves every assertion about the staged root and the outputs; the second build
exists only for the reproducibility test. Both run tools/image/build-image exactly as `make image` does.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import edge_gateway

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "tools" / "image" / "build-image"
POST_BUILD = REPO / "buildroot" / "board" / "edge-gateway" / "common" / "post-build.sh"
EPOCH = "1767225600"  # 2026-01-01T00:00:00Z, fixed so the two builds of the reproducibility test agree


def _build(out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, PYTHON=sys.executable)
    return subprocess.run([str(BUILD), str(out)], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image")
    result = _build(out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _passwd(root: Path) -> dict[str, list[str]]:
    return {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}


def test_sdcard_has_four_partitions(image: Path) -> None:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image / "sdcard.img")], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    assert table["label"] == "dos" and table["id"] == "0x45474757"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83", "83"]
    assert parts[0].get("bootable") is True
    sectors = [p["size"] for p in parts]
    assert sectors == [64 << 11, 512 << 11, 512 << 11, 256 << 11]  # MiB -> 512-byte sectors
    squashfs = (image / "rootfs.squashfs").read_bytes()
    with (image / "sdcard.img").open("rb") as disk:
        for slot in parts[1:3]:  # both root slots hold the root file system
            disk.seek(slot["start"] * 512)
            assert disk.read(len(squashfs)) == squashfs


def test_partitions_carry_labels_and_contents(image: Path) -> None:
    blkid = subprocess.run(
        ["blkid", "-o", "export", str(image / "data.ext4")], capture_output=True, text=True, check=True
    ).stdout
    assert "LABEL=data" in blkid and "TYPE=ext4" in blkid
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /edge-gateway", str(image / "data.ext4")], capture_output=True, text=True, check=True
    ).stdout
    uid = _passwd(image / "rootfs")["edge-gateway"][2]
    state = next(ln.split() for ln in listing.splitlines() if ln.split()[-1] == "state")
    assert state[1] == "40750" and state[3] == uid  # mode, uid: the WAL directory is the service's
    mdir = subprocess.run(
        ["mdir", "-b", "-i", str(image / "boot.vfat"), "::"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"),
    ).stdout
    assert "::/boot.scr" in mdir and "::/config.txt" in mdir
    scr = (image / "boot.scr").read_bytes()
    assert scr[:4] == bytes.fromhex("27051956") and b"BOOT_ORDER" in scr and b"rauc.slot=A" in scr


def test_bundle_verifies_against_the_keyring(image: Path) -> None:
    bundles = list(image.glob("edge-gateway-*.raucb"))
    assert [b.name for b in bundles] == [f"edge-gateway-{edge_gateway.__version__}.raucb"]
    info = subprocess.run(
        ["rauc", "info", f"--keyring={image / 'keyring.pem'}", str(bundles[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    assert (
        "Compatible: \t'edge-gateway-rpi4'" in info.stdout
        and f"Version:    \t'{edge_gateway.__version__}'" in info.stdout
    )
    assert "Bundle Format: \tverity" in info.stdout
    assert f"Checksum:  {_sha256(image / 'rootfs.squashfs')}" in info.stdout
    assert "DEVELOPMENT ONLY" in info.stdout


def test_bundle_from_another_key_is_refused(image: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=stranger",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(other),
            "-days",
            "2",
        ],
        capture_output=True,
        check=True,
    )
    bundle = next(image.glob("*.raucb"))
    info = subprocess.run(
        ["rauc", "info", f"--keyring={other}", str(bundle)], capture_output=True, text=True, check=False
    )
    assert info.returncode != 0


def test_post_build_makes_the_appliance_root(image: Path) -> None:
    root = image / "rootfs"
    for unit in ("edge-gateway.service", "edge-gateway-mark-good.timer"):
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert os.readlink(link) == f"/usr/lib/systemd/system/{unit}"
    for unit in ("edge-gateway.service", "edge-gateway-mark-good.timer", "edge-gateway-mark-good.service"):
        assert (root / "usr/lib/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    # The mark-good oneshot is started by its timer only: nothing in the boot transaction waits for it.
    assert not list(root.glob("etc/systemd/system/*.wants/edge-gateway-mark-good.service"))
    for mount in ("data.mount", "var-lib-edge\\x2dgateway.mount", "etc-edge\\x2dgateway.mount", "boot-firmware.mount"):
        assert os.readlink(root / "etc/systemd/system/local-fs.target.wants" / mount) == f"/etc/systemd/system/{mount}"
    assert (root / "usr/lib/sysusers.d/edge-gateway.conf").is_file()
    assert (root / "usr/lib/tmpfiles.d/edge-gateway.conf").is_file()
    user = _passwd(root)["edge-gateway"]
    assert user[5] == "/var/lib/edge-gateway" and user[2] != "0"
    dialout = next(ln for ln in (root / "etc/group").read_text().splitlines() if ln.startswith("dialout:"))
    assert "edge-gateway" in dialout.split(":")[3].split(",")
    assert "bootloader=uboot" in (root / "etc/rauc/system.conf").read_text()
    assert (root / "etc/rauc/keyring.pem").read_bytes() == (image / "keyring.pem").read_bytes()
    assert "/boot/firmware/uboot.env" in (root / "etc/fw_env.config").read_text()
    for d in ("data", "boot/firmware", "var/lib/edge-gateway"):
        assert (root / d).is_dir()
    assert 'SYMLINK+="rs485-0"' in (root / "etc/udev/rules.d/70-rs485.rules").read_text()
    assert "RuntimeWatchdogSec=" in (root / "etc/systemd/system.conf.d/10-watchdog.conf").read_text()
    assert "SystemMaxUse=" in (root / "etc/systemd/journald.conf.d/10-edge-gateway.conf").read_text()
    assert not (root / "README.md").exists()
    assert f"EDGE_GATEWAY_VERSION={edge_gateway.__version__}\n" in (root / "etc/edge-gateway-release").read_text()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert not mode & stat.S_IWOTH, path
            assert path.lstat().st_mtime == int(EPOCH), path


def test_staged_app_runs_and_its_config_lints(image: Path) -> None:
    root = image / "rootfs"
    (site,) = root.glob("usr/lib/python3*/site-packages")
    script = (root / "usr/bin/edge-gateway").read_text()
    assert script.startswith("#!/usr/bin/python3\n")
    assert not list(root.rglob("*.pyc")) and not list(root.rglob("direct_url.json"))
    # -S: only the staged root's packages (and the stdlib) can be imported.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import edge_gateway, yaml, zstandard, paho.mqtt.client, pymodbus, prometheus_client, sdnotify, jsonschema;"
        "from edge_gateway.config.cli import main; print(edge_gateway.__file__);"
        "sys.argv = ['edge-cfg', 'lint', sys.argv[2]]; sys.exit(main())"
    )
    run = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site), str(root / "etc/edge-gateway")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(str(site))
    assert "0 error(s), 0 warning(s)" in run.stdout + run.stderr
    # edge_gateway_build_info{revision}: the commit the image was built from
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert (site / "edge_gateway" / "REVISION").read_text().strip() == head.stdout.strip()


# The reference consumer lives in app/tests/ (not in the package at all).
TEST_ONLY = ("edge_gateway/testkit.py", "edge_gateway/testkit_etcd.py")


def _module_name(site: Path, path: Path) -> str:
    parts = path.relative_to(site).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The edge_gateway modules `path` imports (anywhere in it, lazy imports included), resolved to files."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c:
                found.add(c)
    return found


def test_image_carries_only_what_the_runtime_imports(image: Path) -> None:
    root = image / "rootfs"
    (site,) = root.glob("usr/lib/python3*/site-packages")
    for rel in TEST_ONLY:
        assert not (site / rel).exists(), rel
    assert not list(site.glob("edge_gateway/**/tests")) and not list(site.glob("tests"))
    modules = {_module_name(site, p): p for p in (site / "edge_gateway").rglob("*.py")}
    # Every shipped module is reached, by its imports, from a console script or `python -m edge_gateway`.
    (entry_points,) = site.glob("edge_gateway-*.dist-info/entry_points.txt")
    groups: dict[str, list[str]] = {}
    for ln in entry_points.read_text().splitlines():
        if ln.startswith("["):
            group = groups.setdefault(ln.strip("[] "), [])
        elif "=" in ln:
            group.append(ln.split("=", 1)[1].strip().split(":")[0])
    scripts = groups["console_scripts"]
    assert "edge_gateway.runtime.cli" in scripts and len(scripts) == 4, scripts
    # The built-in plugins are reached through their entry points (core/registry.py), as installed ones are.
    plugins = groups["edge_gateway.drivers"] + groups.get("edge_gateway.connectors", [])
    assert "edge_gateway.drivers.modbus.plugin" in plugins, groups
    todo, reached = [*scripts, *plugins, "edge_gateway.__main__"], set()
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # parent packages
        todo += _imported(name, modules[name], set(modules))
    assert set(modules) - reached == set(), "shipped but never imported by the runtime"
    # ...and every one of them imports from the staged root alone (-S: no host site-packages).
    probe = "import importlib, sys; sys.path.insert(0, sys.argv[1]); [importlib.import_module(m) for m in sys.argv[2:]]"
    run = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site), *sorted(modules)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    # The venv keeps them: tests, benchmarks and `make demo` import them from there.
    assert all((REPO / "app" / rel).is_file() for rel in TEST_ONLY)
    mk = (REPO / "buildroot/package/python-edge-gateway/python-edge-gateway.mk").read_text()
    assert f"PYTHON_EDGE_GATEWAY_TEST_ONLY = {' '.join(TEST_ONLY)}\n" in mk


def test_post_build_is_idempotent_and_refuses_a_bare_root(image: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(image / "rootfs", root, symlinks=True)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    subprocess.run([str(POST_BUILD), str(root), "rpi4"], check=True, capture_output=True)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before
    bare = tmp_path / "bare"
    (bare / "etc").mkdir(parents=True)
    result = subprocess.run([str(POST_BUILD), str(bare), "rpi4"], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "edge-gateway.service not installed" in result.stderr


def test_same_source_date_epoch_same_image(image: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = _build(again)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("sdcard.img", "rootfs.squashfs", "boot.vfat", "data.ext4", "boot.scr"):
        assert _sha256(again / name) == _sha256(image / name), name
    infos = []
    for out in (image, again):
        info = subprocess.run(
            ["rauc", "info", f"--keyring={out / 'keyring.pem'}", str(next(out.glob("*.raucb")))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        infos.append(
            [
                ln
                for ln in info.splitlines()
                if ln.strip().startswith(("Checksum:", "Size:", "Version:", "Build:", "Filename:"))
            ]
        )
    assert infos[0] == infos[1] and infos[0]
