"""`edge-cfg schema | head`: a reader that goes away early is not an error worth a traceback.

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError, from a print() or from
the final flush at exit ("Exception ignored ... BrokenPipeError"). `guard` does what the Python
documentation recommends (library/signal.html, "Note on SIGPIPE"): flush inside a try, and on
BrokenPipeError point stdout at /dev/null so the interpreter's own flush at exit stays quiet.

The exit code is then 141 (128 + SIGPIPE), what `cat`, `grep` or any C tool killed by SIGPIPE
reports: under `set -o pipefail` a truncated `edge-cfg lint` is never mistaken for a clean one.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Protocol

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE (13), as a shell reports a writer killed by SIGPIPE


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def guard(main: Main) -> Main:
    """Wrap a CLI's main(argv): the same result, or EXIT_BROKEN_PIPE when stdout's reader left.
    argparse's --help and usage errors leave through SystemExit: flushed the same way."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            try:
                code = main(argv)
            finally:
                sys.stdout.flush()  # inside the try: a pending write fails here, not at exit
        except BrokenPipeError:
            _stdout_to_devnull()
            return EXIT_BROKEN_PIPE
        return code

    return wrapper


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (an io.StringIO in a test)
        pass
