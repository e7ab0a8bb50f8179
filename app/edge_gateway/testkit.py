"""Real parts for tests, benchmarks and `make demo`: a Mosquitto broker, socat pty pairs, and an ext4
file system on a loop device that can lose power (`PowerCutDisk`).

Everything listens on 127.0.0.1 only, every process started here is ended by its PID, and every mount
is unmounted and every loop device detached by `close()`.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server a test stops and starts
    again on the same port: a port from free_port() can be taken meanwhile as the local port of any
    outgoing connection (the gateway's, a client's), and the restarted server then cannot bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    return free_port()


def wait_port(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:`port` is in LISTEN state, without connecting: a probe connection to a
    forking server (socat `fork`) starts a child that competes with the real client for its device."""
    want = f"{socket.htonl(0x7F000001):08X}:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[1] == want and cols[3] == "0A":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")
        time.sleep(0.02)


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, by PID; reaps the child."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def require(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if not path:
        raise RuntimeError(f"{program} is not installed: run `make venv` (it installs it with apt-get)")
    return path


@dataclass
class Mosquitto:
    """A private Mosquitto on a free loopback port. `stop()`/`start()` simulate a broker outage
    on the same port; `extra` adds mosquitto.conf lines (e.g. `max_qos 1`)."""

    port: int = 0
    extra: list[str] = field(default_factory=list)
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or stable_port()  # stop()/start() rebind it
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="mosq-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"tcp://{LOOPBACK}:{self.port}"

    def start(self) -> Mosquitto:
        assert self.workdir is not None
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {LOOPBACK}",
                    "allow_anonymous true",
                    "persistence false",
                    "max_inflight_messages 1000",
                    "max_queued_messages 1000000",
                    "log_dest none",
                    *self.extra,
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [require("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PtyPair:
    """Two linked pseudo-terminals (socat), standing in for the two ends of an RS-485 line.
    ptys ignore baud and parity: wire timing is emulated by the PLC simulator."""

    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def a(self) -> str:
        return str(self.dir / "ttyA")

    @property
    def b(self) -> str:
        return str(self.dir / "ttyB")

    def start(self, timeout: float = 5.0) -> PtyPair:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [require("socat"), "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2  # stop at once: neither dirty data nor the running journal reach the device


def power_cut_unsupported() -> str | None:
    """Why `PowerCutDisk` cannot run here (None when it can): it needs root, losetup and mkfs.ext4."""
    if os.geteuid() != 0:
        return "a power cut needs root (loop device, mount, EXT4_IOC_SHUTDOWN)"
    for prog in ("losetup", "mkfs.ext4", "mount", "umount"):
        if not (shutil.which(prog) or os.path.exists(f"/usr/sbin/{prog}") or os.path.exists(f"/sbin/{prog}")):
            return f"{prog} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control)"
    return None


@dataclass
class PowerCutDisk:
    """A small ext4 file system on a loop device whose power can be cut, as xfstests does it.

    `cut()` is the ext4 shutdown ioctl with EXT4_GOING_FLAGS_NOLOGFLUSH: from that instant nothing
    more reaches the device: data not fsynced and the journal's running transaction are lost, as
    they are when a board loses power (what a SIGKILL cannot show: the page cache survives it).
    Later writes fail with EIO. `remount()` is the power coming back: unmount, mount again, and
    ext4 replays its journal. The image is made once (`mkfs` on `start()`) and reused.

    `close()` unmounts and detaches the loop device; call it in a `finally`."""

    dir: Path
    size_mib: int = 128
    mkfs_opts: tuple[str, ...] = ()  # e.g. ("-O", "fast_commit")
    mount_opts: str = ""  # e.g. "data=writeback"
    loop: str | None = None
    mounted: bool = False

    @property
    def image(self) -> Path:
        return self.dir / "disk.img"

    @property
    def mnt(self) -> Path:
        return self.dir / "mnt"

    def _run(self, *args: str) -> str:
        out = subprocess.run([require(args[0]), *args[1:]], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout.strip()

    def start(self) -> PowerCutDisk:
        why = power_cut_unsupported()
        if why:
            raise RuntimeError(why)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib << 20)
        self._run("mkfs.ext4", "-q", "-F", *self.mkfs_opts, str(self.image))
        for attempt in range(5):  # another process may take the free loop device between find and attach
            try:
                self.loop = self._run("losetup", "--find", "--show", str(self.image))
                break
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        try:
            self.mount()
        except BaseException:
            self.close()
            raise
        return self

    def mount(self) -> None:
        assert self.loop is not None
        self._run(
            "mount", "-t", "ext4", *(("-o", self.mount_opts) if self.mount_opts else ()), self.loop, str(self.mnt)
        )
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            self._run("umount", str(self.mnt))
            self.mounted = False

    def cut(self) -> None:
        """Power off: the file system stops at this instant; nothing more reaches the device."""
        fd = os.open(self.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)

    def remount(self) -> None:
        """Power back: unmount the dead file system and mount it again (ext4 replays its journal)."""
        self.umount()
        self.mount()

    def close(self) -> None:
        try:
            if self.mounted:
                for attempt in range(10):  # a child killed a moment ago may still hold a file open
                    try:
                        self.umount()
                        break
                    except RuntimeError:
                        if attempt == 9:
                            raise
                        time.sleep(0.2)
        finally:
            if self.loop is not None:
                self._run("losetup", "-d", self.loop)
                self.loop = None

    def __enter__(self) -> PowerCutDisk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
