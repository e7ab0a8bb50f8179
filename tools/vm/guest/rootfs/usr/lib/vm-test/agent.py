"""VM test agent: runs the host's commands inside the guest, over a virtio-serial port (no network).

One JSON object per line each way. Requests: {"id": N, "op": "run", "argv": [...], "timeout": S,
"input": "..."} → {"id": N, "rc": RC, "out": "...", "err": "..."}; {"op": "write", "path", "data",
"mode"} writes a file atomically and fsyncs it. On start it says {"hello": BOOT_ID}, so the host knows
which boot it talks to. argv is executed directly, never through a shell. Test-only: part of the VM test
image (tools/vm/), never of the product image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PORT = "/dev/virtio-ports/org.edge-gateway.agent"


def handle(req: dict) -> dict:
    op = req.get("op", "run")
    if op == "run":
        try:
            p = subprocess.run(
                req["argv"],
                check=False,
                input=req.get("input", ""),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=req.get("timeout", 60),
            )
        except subprocess.TimeoutExpired as e:
            return {
                "rc": -1,
                "out": str(e.stdout or ""),
                "err": f"timeout after {e.timeout}s",
            }
        except OSError as e:
            return {"rc": -2, "out": "", "err": str(e)}
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
    if op == "write":
        path = req["path"]
        tmp = f"{path}.agent-tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(req["data"])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, int(req.get("mode", "0644"), 8))
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return {"rc": 0, "out": "", "err": ""}
    return {"rc": -3, "out": "", "err": f"unknown op {op!r}"}


def main() -> int:
    while not os.path.exists(PORT):
        time.sleep(0.1)
    fd = os.open(PORT, os.O_RDWR)
    rd = os.fdopen(fd, "rb", buffering=0, closefd=False)

    def send(obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(fd, data) :]

    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        boot_id = f.read().strip()
    send({"hello": boot_id})
    buf = b""
    while True:
        chunk = rd.read(65536)
        if not chunk:  # the host side is not connected: the port reads EOF until it is
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if req.get("op") == "hello":
                send({"id": req.get("id"), "hello": boot_id})
                continue
            try:
                res = handle(req)
            except Exception as e:  # noqa: BLE001 - the agent reports, it never dies on a request
                res = {"rc": -4, "out": "", "err": f"{type(e).__name__}: {e}"}
            res["id"] = req.get("id")
            send(res)


if __name__ == "__main__":
    sys.exit(main())
