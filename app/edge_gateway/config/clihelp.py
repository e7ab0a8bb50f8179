"""The help layout the gateway's command lines share (edge-gateway, edge-cfg, edge-ctl, edge-bus):
descriptions printed as written (their line breaks are part of them), and the tool's exit codes at the
end of its `--help` and of each command's, so a reader finds them wherever they ask. Beside stdout.py
(the SIGPIPE guard), which they share too."""

from __future__ import annotations

import argparse
from typing import Any


class Help:
    """The parsers of one tool, each ending its help with the tool's `exit_codes`."""

    def __init__(self, exit_codes: str) -> None:
        self.exit_codes = exit_codes

    def parser(self, prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        """The tool's own parser; `epilog` follows the exit codes."""
        return argparse.ArgumentParser(
            prog=prog,
            description=description,
            epilog=self.exit_codes + epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def command(self, sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
        """One command of `sub` (the tool's `add_subparsers()`)."""
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=description,
            epilog=self.exit_codes,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p
