from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[3] / "config"


@pytest.fixture
def demo_copy(tmp_path: Path) -> Callable[..., Path]:
    """A copy of the demo config, optionally with `file: (old, new)` text edits applied."""

    def make(edits: dict[str, tuple[str, str]] | None = None, name: str = "cfg") -> Path:
        d = tmp_path / name
        shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("README.md"))
        for fname, (old, new) in (edits or {}).items():
            p = d / fname
            text = p.read_text()
            assert old in text, f"edit target {old!r} not in {fname}"
            p.write_text(text.replace(old, new, 1))
        return d

    return make


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[nth - 1]
