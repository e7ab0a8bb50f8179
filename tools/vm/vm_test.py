"""`make vm-test`: boot the VM test image (tools/vm/build-image) under QEMU/KVM and check the appliance
under real systemd. Writes OUT/report.json (every check, its outcome, timings); exits 1 on any failure.

    python tools/vm/vm_test.py --out build/vm [--seed 1] [--cuts 10] [--only boot,watchdog,...]

Checks, in order, on one disk (build/vm/run/disk.img, a fresh copy of sdcard.img):
  boot       the gateway reaches READY=1 under systemd on the image's defaults (boot-to-READY timed), then
             on the test plant (PLC simulator + Mosquitto inside the VM; the config edited in
             /etc/edge-gateway, i.e. on the data partition) values flow to Mosquitto
  watchdog   SIGSTOP the gateway: systemd's watchdog kills and restarts it, NRestarts+1, nothing committed lost
  powercut   --cuts times, while frames flow, at seeded random moments: QEMU SIGKILLed or QMP quit
             (cache=none); after each boot the WAL recovers, committed never goes back; in the end every
             frame committed before a cut is delivered and no seq is reused
  ota        `rauc install` of the v2 bundle -> reboot into the other slot -> marked good after the
             gateway's grace period (edge-gateway-mark-good.timer) -> rauc status / grubenv show it; the
             /etc/edge-gateway edits survived the update
  readonly   / is the read-only squashfs, nothing writes outside /data, /run, /tmp (and the /var tmpfs):
             findmnt, a scan of the data and boot partitions; journald within its limits
  fallback   `rauc install` of the broken bundle (gateway exits at start) -> the gateway gives up, the
             device reboots, after three attempts GRUB boots the good slot again, the bad one is marked bad
Timings are reported, never asserted, except generous sanity bounds (WatchdogSec).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import GuestError, Vm, kvm_usable

REPO = Path(__file__).resolve().parents[2]
GRUBENV = "/boot/firmware/EFI/BOOT/grubenv"
WAL = "/var/lib/edge-gateway/wal"
LEDGER = "/data/vm-test/ledger.jsonl"
WATCHDOG_SEC = 30  # systemd/edge-gateway.service
RESTART_SEC = 5
GRACE_SEC = 60  # systemd/edge-gateway-mark-good.timer
ALL = ["boot", "watchdog", "powercut", "ota", "readonly", "fallback"]

# The test plant: tools/plcsim on 127.0.0.1:5020 (vm-test-plcsim.service), Mosquitto on 127.0.0.1:1883.
PLANT = {
    "endpoints.yml": "plc_tcp:\n  scheme: tcp\n  host: 127.0.0.1\n  port: 5020\n  opts: { timeout: 500ms }\n",
    "drivers.yml": "plc1:\n  kind: static\n  endpoint_id: plc_tcp\n  proto: modbus\n"
    "  cfg: { unit_id: 1, polling: 100ms, retry: 2 }\n",
    "variables.yml": "".join(
        f"- tag: plant.{t}\n  driver_id: plc1\n  address: {{ type: holding, addr: {a} }}\n  datatype: {d}\n"
        for t, a, d in (
            ("flow", 0, "uint16"),
            ("level", 1, "int16"),
            ("energy", 2, "uint32"),
            ("temp", 4, "float32"),
            ("runtime", 6, "int32"),
        )
    ),
    "connector.yml": "cloud:\n  kind: mqtt5\n  endpoint: tcp://127.0.0.1:1883\n  client_id: vm-edge\n"
    "  tenant: vm\n  device: edge\n  qos: 2\n  batch: 32\n  max_interval: 200ms\n  compression: zstd\n"
    "  backoff: { base: 200ms, max: 2s }\n",
    "gateway.yml": "wal:\n  dir: /var/lib/edge-gateway/wal\n  flush_ms: 100\n  max_bytes: 64MiB\n"
    "metrics:\n  listen: 127.0.0.1:9100\ncontrol:\n  socket: /run/edge-gateway/control.sock\n",
}
MARKER = "# vm-test: operator edit on the device\n"


class CheckFailed(AssertionError):
    pass


def need(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


class Suite:
    def __init__(self, out: Path, seed: int, cuts: int, accel: str = "auto") -> None:
        self.accel = accel
        self.out = out
        self.image = out / "image"
        self.run_dir = out / "run"
        self.seed = seed
        self.cuts = cuts
        self.rng = random.Random(seed)
        self.report: dict[str, Any] = {
            "seed": seed,
            "checks": [],
            "timings": {},
            "boots": [],
        }
        self.vm: Vm | None = None
        self._ledger_off = 0  # bytes of the ledger read so far
        self._covered: set[int] = set()
        self._first: dict[int, list[Any]] = {}
        self._reused: list[str] = []

    # -- plumbing ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        disk = self.run_dir / "disk.img"
        subprocess.run(
            ["cp", "--sparse=always", str(self.image / "sdcard.img"), str(disk)],
            check=True,
        )
        # The bundles reach the guest on a second, read-only disk (no network): ext4 with the .raucb files.
        bdir = self.run_dir / "bundles"
        bdir.mkdir()
        size = 32 << 20
        for b in [
            *self.image.glob("edge-gateway-*-vm2.raucb"),
            *self.image.glob("edge-gateway-*-broken.raucb"),
        ]:
            shutil.copyfile(b, bdir / b.name)
            size += b.stat().st_size * 11 // 10
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "bundles", "-d", str(bdir), str(self.run_dir / "bundles.img"),
             f"{size // 1024 + 8192}k"],
            check=True,
        )  # fmt: skip
        shutil.rmtree(bdir)
        if self.accel == "auto":
            self.accel = (
                "kvm" if kvm_usable(self.image / "vmlinuz", self.run_dir) else "tcg"
            )
        self.report["accel"] = self.accel
        print(f"== accelerator: {self.accel}", flush=True)
        self.vm = Vm(
            self.run_dir,
            disk,
            extra_disks=[self.run_dir / "bundles.img"],
            kvm=self.accel == "kvm",
        )

    def check(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> bool:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        entry: dict[str, Any] = {"name": name}
        try:
            entry.update(fn() or {})
            entry["outcome"] = "pass"
        except Exception as e:  # noqa: BLE001 - a failed check is reported, the next ones still run
            entry["outcome"] = "fail"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            print(f"   FAIL {entry['error']}", flush=True)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.report["checks"].append(entry)
        self.save()
        print(f"   {entry['outcome']} in {entry['seconds']} s", flush=True)
        return entry["outcome"] == "pass"

    def save(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")

    @property
    def g(self) -> Vm:
        assert self.vm is not None
        return self.vm

    def boot(
        self, label: str, new_boot_of: str | None = None, start: bool = True
    ) -> dict[str, Any]:
        """Start QEMU (unless it reboots by itself), wait for the agent and for the gateway's READY=1."""
        vm = self.g
        if start:
            vm.start()
        t0 = vm.started_at if start else time.monotonic()
        boot_id = vm.wait_agent(240, new_boot_of=new_boot_of)
        t_agent = time.monotonic() - t0
        st = self.wait_active(180)
        t_ready = time.monotonic() - t0
        mono = int(
            vm.show("edge-gateway", "ActiveEnterTimestampMonotonic")[
                "ActiveEnterTimestampMonotonic"
            ]
        )
        slot = self.booted_slot()
        info = {
            "label": label,
            "boot_id": boot_id,
            "slot": slot,
            "host_start_to_agent_s": round(t_agent, 2),
            "host_start_to_ready_s": round(t_ready, 2),
            "kernel_to_ready_s": round(mono / 1e6, 2),
            "nrestarts": st["NRestarts"],
        }
        self.report["boots"].append(info)
        print(
            f"   boot {label}: slot {slot}, READY {t_ready:.1f} s after QEMU start ({mono / 1e6:.1f} s after the kernel)"
        )
        return info

    def wait_active(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        st: dict[str, str] = {}
        while time.monotonic() < deadline:
            st = self.g.show(
                "edge-gateway", "ActiveState", "SubState", "NRestarts", "MainPID"
            )
            if st.get("ActiveState") == "active" and st.get("SubState") == "running":
                return st
            time.sleep(0.2)
        journal = self.g.run(
            ["journalctl", "-b", "-u", "edge-gateway", "-n", "40", "--no-pager"],
            check=False,
        )
        raise CheckFailed(
            f"edge-gateway not active/running within {timeout}s: {st}\n{journal}"
        )

    def booted_slot(self) -> str:
        cmdline = self.g.run(["cat", "/proc/cmdline"])
        for word in cmdline.split():
            if word.startswith("rauc.slot="):
                return word.split("=", 1)[1]
        return "?"

    def grubenv(self) -> dict[str, str]:
        out = self.g.run(["grub-editenv", GRUBENV, "list"])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def rauc_status(self) -> dict[str, Any]:
        return json.loads(
            self.g.run(["rauc", "status", "--output-format=json"], timeout=60)
        )  # type: ignore[no-any-return]

    def committed(self) -> int:
        out = self.g.run(["edge-bus", "--wal-dir", WAL, "stats", "--json"])
        return int(json.loads(out)["committed_seq"])

    def metric(self, name: str) -> float:
        code = (
            "import sys,urllib.request\n"
            "t=urllib.request.urlopen('http://127.0.0.1:9100/metrics',timeout=5).read().decode()\n"
            "print(sum(float(l.rsplit(' ',1)[1]) for l in t.splitlines() if l.startswith(sys.argv[1])))\n"
        )
        return float(self.g.run(["python3", "-c", code, name]).strip() or 0)

    def coverage(self) -> tuple[set[int], int, dict[int, list[Any]], list[str]]:
        """(seqs covered, highest, one frame per seq, reused seqs) from the ledger, read incrementally:
        only the complete lines after what was read before (a line a power cut tore is skipped)."""
        out = self.g.run(
            ["tail", "-c", f"+{self._ledger_off + 1}", LEDGER], check=False
        )
        data = out.encode()
        done = data.rfind(b"\n") + 1
        self._ledger_off += done
        for line in data[:done].decode(errors="replace").splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            lo, _, hi = m["cover"].partition("-")
            self._covered.update(range(int(lo), int(hi) + 1))
            for fr in m["frames"]:
                seq = fr[0]
                if seq in self._first and self._first[seq][1:3] != fr[1:3]:
                    self._reused.append(f"seq {seq}: {self._first[seq]} then {fr}")
                self._first.setdefault(seq, fr)
        return self._covered, max(self._covered, default=0), self._first, self._reused

    def delivered_through(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        missing: list[int] = []
        while time.monotonic() < deadline:
            covered, _, _, _ = self.coverage()
            missing = [s for s in range(1, seq + 1) if s not in covered]
            if not missing:
                return
            time.sleep(2)
        raise CheckFailed(
            f"not delivered through seq {seq}: {len(missing)} missing, first {missing[:10]}"
        )

    def wait_flowing(self, timeout: float = 60) -> int:
        """Until the ledger's highest seq grows (frames flow PLC -> WAL -> Mosquitto); returns it."""
        _, start, _, _ = self.coverage()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, high, _, _ = self.coverage()
            if high > start:
                return high
            time.sleep(0.5)
        raise CheckFailed(
            f"no frames flowing to Mosquitto within {timeout}s (ledger high {start})"
        )

    def reboot(self) -> str:
        """`systemctl reboot` in the guest; returns the old boot id."""
        old = self.g.boot_id
        assert old is not None
        try:
            self.g.run(["systemctl", "reboot"], timeout=10, check=False)
        except GuestError:
            pass
        return old

    # -- checks ----------------------------------------------------------------------------------------------
    def c_boot(self) -> dict[str, Any]:
        first = self.boot("first boot, image defaults")
        # RAUC's view of the fresh image.
        env = self.grubenv()
        # The test plant: configuration edited on the device (lands on the data partition).
        for name, text in PLANT.items():
            self.g.write(f"/etc/edge-gateway/{name}", MARKER + text)
        self.g.run(["edge-cfg", "lint", "/etc/edge-gateway"])
        self.g.run(["systemctl", "restart", "edge-gateway"], timeout=120)
        st = self.wait_active(60)
        need(st["NRestarts"] == "0", f"NRestarts after a manual restart: {st}")
        high = self.wait_flowing(60)
        _, _, frames, _ = self.coverage()
        tags = sorted({f[1] for f in frames.values()})
        good = [f for f in frames.values() if f[4] == "good"]
        need(
            "plant.flow" in tags and good,
            f"no good plant values at Mosquitto: tags {tags}",
        )
        return {
            "boot_to_ready_s": first["host_start_to_ready_s"],
            "kernel_to_ready_s": first["kernel_to_ready_s"],
            "systemctl_show": st,
            "grubenv": env,
            "ledger_high": high,
            "tags": tags,
            "sample": good[-1],
        }

    def c_watchdog(self) -> dict[str, Any]:
        vm = self.g
        self.wait_flowing()
        st0 = self.wait_active(30)
        pid, n0 = st0["MainPID"], int(st0["NRestarts"])
        before = self.committed()
        t0 = time.monotonic()
        vm.run(["kill", "-STOP", pid])
        killed_after = None
        while time.monotonic() - t0 < WATCHDOG_SEC + 60:
            if killed_after is None and vm.rc(["test", "-e", f"/proc/{pid}"]) != 0:
                killed_after = time.monotonic() - t0
            st = vm.show(
                "edge-gateway", "ActiveState", "SubState", "NRestarts", "MainPID"
            )
            if (
                killed_after is not None
                and st["MainPID"] not in (pid, "0")
                and st["SubState"] == "running"
            ):
                break
            time.sleep(0.5)
        restarted_after = time.monotonic() - t0
        need(
            killed_after is not None,
            f"the stopped gateway (pid {pid}) was not killed within {WATCHDOG_SEC + 60}s",
        )
        assert killed_after is not None
        # Sanity bound: the last WATCHDOG=1 came at most WatchdogSec/2 before SIGSTOP, systemd acts at WatchdogSec.
        need(
            killed_after <= WATCHDOG_SEC + 10,
            f"killed {killed_after:.1f}s after SIGSTOP (WatchdogSec={WATCHDOG_SEC})",
        )
        need(
            int(st["NRestarts"]) == n0 + 1,
            f"NRestarts {st['NRestarts']}, expected {n0 + 1}",
        )
        journal = vm.run(
            ["journalctl", "-b", "-u", "edge-gateway", "--no-pager", "-o", "cat"]
        )
        need("Watchdog timeout" in journal, "no 'Watchdog timeout' in the journal")
        after = self.committed()
        need(after >= before, f"committed went back: {before} -> {after}")
        self.delivered_through(before, 60)
        return {
            "killed_after_sigstop_s": round(killed_after, 1),
            "ready_again_after_sigstop_s": round(restarted_after, 1),
            "nrestarts": f"{n0} -> {st['NRestarts']}",
            "committed_before": before,
            "committed_after": after,
        }

    def c_powercut(self) -> dict[str, Any]:
        vm = self.g
        cuts = []
        committed = 0
        for i in range(self.cuts):
            self.wait_flowing()
            time.sleep(self.rng.uniform(0.2, 4.0))
            before = self.committed()  # a lower bound of what is committed at the cut
            how = "SIGKILL" if i % 2 == 0 else "QMP quit"
            if how == "SIGKILL":
                vm.kill()
            else:
                vm.quit()
            info = self.boot(f"after power cut {i + 1} ({how})")
            after = self.committed()
            need(
                after >= before,
                f"cut {i + 1} (seed {self.seed}): committed went back {before} -> {after}",
            )
            need(
                self.metric('framebus_drop_total{reason="corrupt"') == 0,
                f"cut {i + 1}: corrupt WAL records",
            )
            committed = max(committed, before)
            cuts.append(
                {"cut": i + 1, "how": how, "committed_before": before, "committed_after_recovery": after,
                 "slot": info["slot"], "boot_to_ready_s": info["host_start_to_ready_s"]}
            )  # fmt: skip
        self.wait_flowing()
        self.delivered_through(committed, 120)
        _, high, _, reused = self.coverage()
        need(not reused, f"seqs reused: {reused[:5]}")
        return {
            "cuts": cuts,
            "survived": len(cuts),
            "committed_before_last_cut": committed,
            "ledger_high": high,
        }

    def bundle(self, kind: str) -> str:
        names = [p.name for p in self.image.glob(f"edge-gateway-*-{kind}.raucb")]
        need(len(names) == 1, f"no single {kind} bundle in {self.image}: {names}")
        self.g.run(["mkdir", "-p", "/run/vm-bundles"])
        if self.g.rc(["mountpoint", "-q", "/run/vm-bundles"]) != 0:
            self.g.run(["mount", "-o", "ro", "LABEL=bundles", "/run/vm-bundles"])
        return f"/run/vm-bundles/{names[0]}"

    def install(self, path: str) -> tuple[str, float]:
        t0 = time.monotonic()
        out = self.g.run(["rauc", "install", path], timeout=600)
        return out, time.monotonic() - t0

    def c_ota(self) -> dict[str, Any]:
        vm = self.g
        old_slot = self.booted_slot()
        new_slot = "B" if old_slot == "A" else "A"
        path = self.bundle("vm2")
        info_out = vm.run(["rauc", "info", path], timeout=120)
        out, took = self.install(path)
        env = self.grubenv()
        need(
            env.get("ORDER", "").split()[0] == new_slot,
            f"after install ORDER={env.get('ORDER')}, expected {new_slot} first",
        )
        old = self.reboot()
        info = self.boot("after OTA install (v2)", new_boot_of=old, start=False)
        need(
            info["slot"] == new_slot, f"booted slot {info['slot']}, expected {new_slot}"
        )
        release = vm.run(["cat", "/etc/edge-gateway-release"])
        need("-vm2" in release, f"not the v2 root: {release}")
        edited = vm.run(["cat", "/etc/edge-gateway/endpoints.yml"])
        need(
            MARKER in edited and "127.0.0.1" in edited,
            "the /etc/edge-gateway edit did not survive the update",
        )
        self.wait_flowing()
        trial = self.grubenv()
        need(
            trial.get(f"{new_slot}_TRY") == "1",
            f"the new slot is not on trial: {trial}",
        )
        t_ready = time.monotonic()
        deadline = t_ready + GRACE_SEC + 90
        good_after = None
        while time.monotonic() < deadline:
            st = vm.show(
                "edge-gateway-mark-good.service",
                "Result",
                "ActiveState",
                "ExecMainStatus",
            )
            env = self.grubenv()
            if env.get(f"{new_slot}_TRY") == "0" and env.get(f"{new_slot}_OK") == "1":
                good_after = time.monotonic() - t_ready
                break
            time.sleep(2)
        need(
            good_after is not None,
            f"slot {new_slot} not marked good within {GRACE_SEC + 90}s: {env}, mark-good {st}",
        )
        journal = vm.run(
            [
                "journalctl",
                "-b",
                "-u",
                "edge-gateway-mark-good",
                "--no-pager",
                "-o",
                "cat",
            ]
        )
        status = self.rauc_status()
        slots = {s_name: s for d in status["slots"] for s_name, s in d.items()}
        booted = [s for s in slots.values() if s.get("state") == "booted"]
        need(
            status.get("booted") == new_slot,
            f"rauc status booted={status.get('booted')}",
        )
        need(
            bool(booted) and booted[0].get("boot_status") == "good",
            f"rauc status: {booted}",
        )
        text = vm.run(["rauc", "status", "--detailed"], timeout=60)
        return {
            "from_slot": old_slot,
            "to_slot": new_slot,
            "install_s": round(took, 1),
            "marked_good_after_ready_s": round(good_after or 0, 1),
            "rauc_info": info_out.splitlines()[:12],
            "rauc_install": out.splitlines()[-3:],
            "grubenv_trial": trial,
            "grubenv_good": env,
            "mark_good_journal": journal.splitlines()[-5:],
            "rauc_status": text.splitlines(),
            "config_edit_persisted": True,
        }

    def c_readonly(self) -> dict[str, Any]:
        vm = self.g
        mounts = json.loads(
            vm.run(["findmnt", "-J", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"])
        )

        def flat(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for n in nodes:
                out.append(n)
                out.extend(flat(n.get("children", [])))
            return out

        rows = flat(mounts["filesystems"])
        root = next(r for r in rows if r["target"] == "/")
        need(
            root["fstype"] == "squashfs" and "ro" in root["options"].split(","),
            f"/ is {root}",
        )
        volatile = {"tmpfs", "devtmpfs", "proc", "sysfs", "cgroup2", "devpts", "mqueue", "hugetlbfs", "debugfs",
                    "tracefs", "securityfs", "pstore", "efivarfs", "bpf", "configfs", "fusectl", "binfmt_misc",
                    "autofs", "ramfs"}  # fmt: skip
        persistent_rw = []
        for r in rows:
            opts = r["options"].split(",")
            if "ro" in opts or r["fstype"] in volatile:
                continue
            persistent_rw.append(r)
        allowed = (
            "/data",
            "/var/lib/edge-gateway",
            "/etc/edge-gateway",
            "/boot/firmware",
            "/run/vm-bundles",
        )
        bad = [r for r in persistent_rw if not r["target"].startswith(allowed)]
        need(not bad, f"writable persistent mounts outside /data: {bad}")
        tmpfs_var = next((r for r in rows if r["target"] == "/var"), None)
        need(
            tmpfs_var is not None and tmpfs_var["fstype"] == "tmpfs",
            f"/var is {tmpfs_var}",
        )
        # Everything that persists: the data partition (only these trees) and the boot partition (grubenv).
        files = vm.run(["find", "/data", "-xdev", "-mindepth", "1"]).split()
        ok = ("/data/lost+found", "/data/edge-gateway", "/data/rauc", "/data/vm-test")
        stray = [f for f in files if not f.startswith(ok)]
        need(not stray, f"unexpected files on the data partition: {stray[:10]}")
        upper = vm.run(["find", "/data/edge-gateway/etc", "-mindepth", "1"]).split()
        boot = vm.run(["find", "/boot/firmware", "-type", "f"]).split()
        boot_hash = dict(
            reversed(line.split(None, 1))
            for line in vm.run(["sha256sum", *boot]).splitlines()  # type: ignore[misc]
        )
        efi = self.image / "EFI" / "BOOT"
        for name in ("BOOTX64.EFI", "grub.cfg"):
            want = subprocess.run(
                ["sha256sum", str(efi / name)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[0]
            need(
                boot_hash.get(f"/boot/firmware/EFI/BOOT/{name}") == want,
                f"boot partition {name} changed",
            )
        need(
            set(boot)
            == {
                f"/boot/firmware/EFI/BOOT/{n}"
                for n in ("BOOTX64.EFI", "grub.cfg", "grubenv")
            },
            f"boot files {boot}",
        )
        # The slots: what is on them is what was installed (read-only block devices in use).
        var_files = vm.run(
            ["find", "/var", "-xdev", "-type", "f", "-newer", "/proc/1/cmdline"],
            check=False,
        ).split()
        # journald: volatile, within RuntimeMaxUse=32M.
        usage = vm.run(["journalctl", "--disk-usage"])
        du = int(vm.run(["du", "-sb", "/run/log/journal"]).split()[0])
        need(du <= 32 << 20, f"journal {du} bytes > RuntimeMaxUse=32M")
        # Storage=volatile: nothing in /var/log/journal (Debian ships the directory; /var is a tmpfs anyway).
        persistent = vm.run(
            ["find", "/var/log/journal", "-type", "f"], check=False
        ).split()
        need(not persistent, f"journal files outside /run: {persistent[:5]}")
        cfg = vm.run(["systemd-analyze", "cat-config", "systemd/journald.conf"])
        need("RuntimeMaxUse=32M" in cfg, "journald drop-in not in effect")
        return {
            "root": {k: v for k, v in root.items() if k != "children"},
            "persistent_writable_mounts": [
                f"{r['target']} ({r['source']}, {r['fstype']})" for r in persistent_rw
            ],
            "data_files": len(files),
            "config_overrides": upper,
            "var_tmpfs_files_written": len(var_files),
            "journal": usage.strip(),
            "journal_bytes": du,
        }

    def c_fallback(self) -> dict[str, Any]:
        vm = self.g
        good_slot = self.booted_slot()
        bad_slot = "B" if good_slot == "A" else "A"
        path = self.bundle("broken")
        out, took = self.install(path)
        t0 = time.monotonic()
        assert vm.serial_log is not None
        mark = vm.serial_log.stat().st_size
        old = self.reboot()
        # Each boot of the broken slot: the gateway exits at start, systemd gives up after the start limit and
        # reboots; GRUB counts the attempts. The agent says hello on every boot.
        boots = []
        deadline = t0 + 900
        while time.monotonic() < deadline:
            bid = vm.wait_agent(max(1, deadline - time.monotonic()), new_boot_of=old)
            old = bid
            try:
                slot = self.booted_slot()
                env = self.grubenv()
            except GuestError:
                continue  # rebooted under us
            boots.append(
                {"slot": slot, "grubenv": env, "t": round(time.monotonic() - t0, 1)}
            )
            print(f"   boot on slot {slot}: {env}", flush=True)
            if slot == good_slot:
                break
        need(
            bool(boots) and boots[-1]["slot"] == good_slot,
            f"never came back to slot {good_slot}: {boots}",
        )
        # GRUB's own account on the serial console: every boot, also those the agent did not see.
        console = vm.serial_log.read_bytes()[mark:].decode(errors="replace")
        grub = re.findall(r"RAUC: booting slot ([AB])", console)
        need(
            grub == [bad_slot] * 3 + [good_slot],
            f"GRUB booted {grub}, expected 3 x {bad_slot} then {good_slot}",
        )
        need(
            f"slot {bad_slot} failed three boots, marking it bad" in console,
            "GRUB did not mark the broken slot bad",
        )
        self.wait_active(120)
        env = self.grubenv()
        need(
            env.get(f"{bad_slot}_OK") == "0",
            f"the broken slot is not marked bad: {env}",
        )
        status = self.rauc_status()
        slots = {s_name: s for d in status["slots"] for s_name, s in d.items()}
        bad = [s for s in slots.values() if s.get("bootname") == bad_slot]
        need(
            bool(bad) and bad[0].get("boot_status") == "bad",
            f"rauc status of slot {bad_slot}: {bad}",
        )
        need("-vm2" in vm.run(["cat", "/etc/edge-gateway-release"]), "not back on v2")
        self.wait_flowing()
        # Until the grace period is over the good slot is on trial again (its _TRY is 1, which rauc status
        # shows as bad); then mark-good confirms it once more.
        t_back = time.monotonic()
        while (
            time.monotonic() - t_back < GRACE_SEC + 90
            and self.grubenv().get(f"{good_slot}_TRY") != "0"
        ):
            time.sleep(2)
        env = self.grubenv()
        need(
            env.get(f"{good_slot}_TRY") == "0",
            f"slot {good_slot} not confirmed again: {env}",
        )
        status = self.rauc_status()
        slots = {s_name: s for d in status["slots"] for s_name, s in d.items()}
        states = {s.get("bootname"): s.get("boot_status") for s in slots.values()}
        need(
            states == {good_slot: "good", bad_slot: "bad"},
            f"rauc status boot states {states}",
        )
        return {
            "good_slot": good_slot,
            "broken_slot": bad_slot,
            "install_s": round(took, 1),
            "back_on_good_slot_after_s": round(time.monotonic() - t0, 1),
            "boot_status": states,
            "grubenv_end": env,
            "boots_seen_by_agent": boots,
            "grub_boots": grub,
            "rauc_status": vm.run(["rauc", "status"]).splitlines(),
            "rauc_install": out.splitlines()[-2:],
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "vm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cuts", type=int, default=10)
    ap.add_argument(
        "--accel",
        choices=["auto", "kvm", "tcg"],
        default="auto",
        help="auto: KVM if a probe boots",
    )
    ap.add_argument(
        "--only",
        default=",".join(ALL),
        help="comma-separated subset of " + ",".join(ALL),
    )
    a = ap.parse_args()
    only = a.only.split(",")
    s = Suite(a.out.resolve(), a.seed, a.cuts, a.accel)
    t0 = time.monotonic()
    ok = True
    try:
        s.prepare()
        for name in ALL:
            if name not in only:
                continue
            passed = s.check(name, getattr(s, f"c_{name}"))
            ok = ok and passed
            if not passed and (name == "boot" or not s.g.alive()):
                break  # nothing else can run on a guest that is not up
        if s.vm is not None and s.vm.alive():
            s.g.run(
                ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], check=False
            )
    finally:
        if s.vm is not None:
            try:
                if s.vm.alive():
                    (s.run_dir / "journal-last-boot.txt").write_text(
                        s.vm.run(
                            ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
                            check=False,
                            timeout=60,
                        )
                    )
            except Exception as e:  # noqa: BLE001 - best effort evidence
                print(f"vm-test: no journal of the last boot: {e}", file=sys.stderr)
            s.vm.close()
    ran = {c["name"] for c in s.report["checks"]}
    missing = [n for n in ALL if n in only and n not in ran]
    for n in missing:
        s.report["checks"].append({"name": n, "outcome": "not run"})
    ok = ok and not missing
    s.report["ok"] = ok
    s.report["timings"]["vm_test_s"] = round(time.monotonic() - t0, 1)
    s.save()
    print(
        f"vm-test: {'PASS' if ok else 'FAIL'} in {s.report['timings']['vm_test_s']} s, report {s.out / 'report.json'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
