"""What every benchmark shares: argument parsing and writing `<name>.json` + `<name>.md`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))


def args(
    description: str, more: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "--out", default="build/bench", help="directory for <name>.json and <name>.md"
    )
    ap.add_argument("--quick", action="store_true", help="shorter runs (CI smoke)")
    if more is not None:  # a benchmark's own options
        more(ap)
    return ap.parse_args()


def write(out: str, name: str, figures: dict[str, Any], markdown: str) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (d / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
