"""`python -m edge_gateway ...` is `edge-gateway ...` (the console script of pyproject.toml)."""

from __future__ import annotations

import sys

from edge_gateway.runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
