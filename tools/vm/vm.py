"""Drive the VM test image under QEMU/KVM: no network device; the serial console goes to a file, QMP
(power control) and the test agent (commands, tools/vm/guest) are unix sockets under build/vm/run/.

    vm = Vm(run_dir, disk); vm.start(); vm.wait_agent(); vm.run(["systemctl", "is-active", "x"]); vm.power_cut()

Every QEMU process is ended by its PID (Vm.kill / Vm.close)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def kvm_usable(kernel: Path | None, scratch: Path) -> bool:
    """Whether KVM runs a guest here: /dev/kvm can exist and create VMs while vCPUs still fail (a nested
    hypervisor without FPU/VMX support: OVMF stops with "KVM internal error ... emulation failure").
    The probe boots `kernel` with earlyprintk for a few seconds and looks for its banner."""
    if not Path("/dev/kvm").exists():
        return False
    if kernel is None:
        return True
    log = scratch / "kvm-probe.log"
    log.unlink(missing_ok=True)
    p = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", "host,-arch-capabilities", "-m", "256",
         "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none", "-kernel", str(kernel),
         "-append", "earlyprintk=ttyS0 console=ttyS0 panic=-1", "-chardev", f"file,id=c,path={log}",
         "-serial", "chardev:c"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and p.poll() is None:
            if log.exists() and b"Linux version" in log.read_bytes():
                return True
            time.sleep(0.2)
        return False
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


class GuestError(RuntimeError):
    pass


class Vm:
    def __init__(
        self,
        run_dir: Path,
        disk: Path,
        memory_mb: int = 1024,
        cpus: int = 2,
        extra_disks: list[Path] | None = None,
        kvm: bool = True,
    ) -> None:
        self.kvm = kvm
        self.dir = run_dir
        self.disk = disk
        self.extra_disks = extra_disks or []
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.launches = 0
        self.qmp_path = run_dir / "qmp.sock"
        self.agent_path = run_dir / "agent.sock"
        self.vars = run_dir / "OVMF_VARS.fd"
        self._agent: socket.socket | None = None
        self._buf = b""
        self._id = 0
        self.boot_id: str | None = None
        self.started_at = 0.0
        self.serial_log: Path | None = None

    # -- power ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        assert self.proc is None, "QEMU already running"
        if not self.vars.exists():
            shutil.copyfile(OVMF_VARS, self.vars)
        for p in (self.qmp_path, self.agent_path):
            p.unlink(missing_ok=True)
        self.launches += 1
        self.serial_log = self.dir / f"serial-{self.launches:02d}.log"
        argv = [
            "qemu-system-x86_64",
            "-name", "edge-gateway-vm",
            # KVM: host minus ARCH_CAPABILITIES (with plain `host` a nested KVM refuses MSR 0x10a and QEMU
            # aborts); without a usable KVM, multi-threaded TCG (slower, same behaviour).
            *(["-machine", "q35,accel=kvm", "-cpu", "host,-arch-capabilities"] if self.kvm
              else ["-machine", "q35", "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]),
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-nic", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            # cache=none: a write the guest was told is on disk is on the host's disk (O_DIRECT), so a
            # SIGKILL of QEMU is a power cut, not a lost host page cache.
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=none",
            *[a for d in self.extra_disks for a in ("-drive", f"file={d},format=raw,if=virtio,readonly=on")],
            "-device", "i6300esb",
            "-action", "watchdog=reset",
            "-chardev", f"file,id=con,path={self.serial_log}",
            "-serial", "chardev:con",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=org.edge-gateway.agent",
        ]  # fmt: skip
        qlog = open(self.dir / f"qemu-{self.launches:02d}.log", "wb")  # noqa: SIM115 - QEMU owns it
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT
        )
        qlog.close()
        deadline = time.monotonic() + 10
        while not self.agent_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"QEMU did not start: {(self.dir / f'qemu-{self.launches:02d}.log').read_text()}"
                )
            time.sleep(0.05)
        self._agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._agent.connect(str(self.agent_path))
        self._buf = b""
        self.boot_id = None

    def kill(self) -> None:
        """Power cut: SIGKILL to QEMU's PID, nothing flushed by the guest."""
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._drop()

    def qmp(self, command: str, **arguments: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            for cmd in (
                {"execute": "qmp_capabilities"},
                {"execute": command, "arguments": arguments},
            ):
                f.write(json.dumps(cmd).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        return None  # QEMU went away (quit)
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        break
            return msg

    def quit(self) -> None:
        """Power cut through QMP `quit` (QEMU exits at once, the guest is not told)."""
        if self.proc is None:
            return
        try:
            self.qmp("quit")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._drop()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self._drop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _drop(self) -> None:
        if self._agent is not None:
            self._agent.close()
        self._agent = None
        self.proc = None

    # -- the agent -----------------------------------------------------------------------------------------
    def _readline(self, deadline: float) -> dict[str, Any] | None:
        assert self._agent is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.proc is not None and self.proc.poll() is not None:
                raise GuestError("QEMU exited")
            self._agent.settimeout(min(left, 1.0))
            try:
                chunk = self._agent.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError("agent socket closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)  # type: ignore[no-any-return]
        except ValueError:
            return {}

    def wait_agent(self, timeout: float = 120, new_boot_of: str | None = None) -> str:
        """Until the agent of a boot (other than `new_boot_of`) answers; returns its boot id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._id += 1
            self._send({"id": self._id, "op": "hello"})
            end = min(deadline, time.monotonic() + 2)
            while True:
                msg = self._readline(end)
                if msg is None:
                    break
                if "hello" in msg and msg["hello"] != new_boot_of:
                    self.boot_id = msg["hello"]
                    return msg["hello"]  # type: ignore[no-any-return]
        raise GuestError(f"no agent within {timeout}s (serial log {self.serial_log})")

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._agent is not None
        self._agent.sendall(json.dumps(obj).encode() + b"\n")

    def request(self, req: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        rid = self._id
        self._send({**req, "id": rid, "timeout": timeout})
        deadline = time.monotonic() + timeout + 10
        while True:
            msg = self._readline(deadline)
            if msg is None:
                raise GuestError(f"no answer to {req} within {timeout}s")
            if msg.get("id") == rid:
                return msg
            if (
                "hello" in msg
                and msg.get("id") is None
                and msg["hello"] != self.boot_id
            ):
                raise GuestError(f"the guest rebooted during {req}")

    def run(
        self, argv: list[str], timeout: float = 60, check: bool = True, input: str = ""
    ) -> str:
        res = self.request({"op": "run", "argv": argv, "input": input}, timeout)
        if check and res["rc"] != 0:
            raise GuestError(f"{argv}: rc {res['rc']}\n{res['out']}\n{res['err']}")
        return str(res["out"])

    def rc(self, argv: list[str], timeout: float = 60) -> int:
        return int(self.request({"op": "run", "argv": argv}, timeout)["rc"])

    def write(self, path: str, data: str, mode: str = "0644") -> None:
        res = self.request({"op": "write", "path": path, "data": data, "mode": mode})
        if res["rc"] != 0:
            raise GuestError(f"write {path}: {res['err']}")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, "-p", ",".join(props)])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
