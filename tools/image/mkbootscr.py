"""Wrap a U-Boot script (boot.cmd) into boot.scr, as `mkimage -A arm64 -T script -C none -d` would.

`make image` runs without u-boot-tools; Buildroot's own build uses its host mkimage instead. The legacy
image header carries a timestamp: SOURCE_DATE_EPOCH, so the output is reproducible.

    python3 tools/image/mkbootscr.py boot.cmd boot.scr
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

IH_MAGIC = 0x27051956
IH_OS_LINUX = 5
IH_ARCH_ARM64 = 22
IH_TYPE_SCRIPT = 6
IH_COMP_NONE = 0
HEADER = struct.Struct(">7I4B32s")


def boot_script(
    script: bytes, timestamp: int, name: bytes = b"edge-gateway RAUC A/B"
) -> bytes:
    """The script image: header, then a one-entry length table (length, 0) and the script itself."""
    data = struct.pack(">II", len(script), 0) + script
    fields = [IH_MAGIC, 0, timestamp, len(data), 0, 0, zlib.crc32(data)]
    tail = [IH_OS_LINUX, IH_ARCH_ARM64, IH_TYPE_SCRIPT, IH_COMP_NONE, name[:32]]
    header = HEADER.pack(*fields, *tail)
    fields[1] = zlib.crc32(header)
    return HEADER.pack(*fields, *tail) + data


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mkbootscr.py BOOT_CMD BOOT_SCR", file=sys.stderr)
        return 2
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None or not epoch.isdigit():
        print(
            "mkbootscr.py: SOURCE_DATE_EPOCH must be set to a number of seconds",
            file=sys.stderr,
        )
        return 2
    Path(argv[1]).write_bytes(boot_script(Path(argv[0]).read_bytes(), int(epoch)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
