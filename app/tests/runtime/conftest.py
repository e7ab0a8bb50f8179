from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .plant import Plant


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    try:
        yield p
    finally:
        p.stop()
