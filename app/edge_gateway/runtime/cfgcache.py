"""The configuration store's revisions as directories on the data partition: what the loader reads,
and the offline cache a gateway starts from when the store is unreachable.

    <state>/etcd/rev-<N>/endpoints.yml … gateway.yml, revision.json    one etcd revision, as pushed
    <state>/etcd/current -> rev-<N>                                    the last one that was applied

A revision is written into a temporary directory (every file and the directory fsync'd), then renamed
to `rev-<N>`: a power cut leaves either no `rev-<N>` or a whole one. It is loaded by the ordinary
loader, so every problem keeps its `file:line` (`rev-<N>/variables.yml:12: …`). Only once the gateway
has applied it does `current` move to it (a new symlink renamed over the old one, then the directory
fsync'd), and the revisions before it are removed: the cache is always the last good configuration,
never a refused or half-written one. One thread writes it (the store's watch thread, runtime/fleet.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_gateway.config.model import FILES
from edge_gateway.core.durable import fsync_dir

log = logging.getLogger(__name__)

CURRENT = "current"
PREFIX = "rev-"
META = "revision.json"
FILE_NAMES = frozenset(FILES.values())


@dataclass(frozen=True)
class Cached:
    revision: int
    path: Path
    meta: dict[str, Any]


def file_name(table: str) -> str | None:
    """The file a store key's table is written to (`variables` or `variables.yml` → variables.yml); None
    for anything else, so a stray key can never name a path outside the revision directory."""
    name = table if table.endswith(".yml") else f"{table}.yml"
    return name if name in FILE_NAMES else None


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class RevisionCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, revision: int) -> Path:
        return self.root / f"{PREFIX}{revision}"

    def write(self, revision: int, tables: dict[str, str], meta: dict[str, Any] | None = None) -> Path:
        """Revision `revision`'s tables as a directory, whole or not at all; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(revision)
        cur = self.current()
        if cur is not None and cur.revision == revision and final.is_dir():
            return final  # already there and running: never rewrite what the gateway runs on
        tmp = self.root / f".{PREFIX}{revision}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for table, text in sorted(tables.items()):
            name = file_name(table)
            if name is None:
                log.warning("configuration store: key %r is not one of the five tables; ignored", table)
                continue
            _write(tmp / name, text.encode("utf-8"))
        info = {"revision": revision, "written_at": time.time(), **(meta or {})}
        _write(tmp / META, json.dumps(info, sort_keys=True, default=str).encode())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)  # a revision refused earlier, fetched again after a resync
        os.rename(tmp, final)
        fsync_dir(self.root)
        return final

    def commit(self, revision: int) -> None:
        """`revision` was applied: it becomes the cache, and the older ones go."""
        link = self.root / f".{CURRENT}.tmp-{os.getpid()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(f"{PREFIX}{revision}", link)
        os.replace(link, self.root / CURRENT)
        fsync_dir(self.root)
        self.prune(keep=revision)

    def discard(self, revision: int) -> None:
        """A refused revision's directory (never the current one)."""
        cur = self.current()
        if cur is None or cur.revision != revision:
            shutil.rmtree(self.path(revision), ignore_errors=True)

    def prune(self, keep: int) -> None:
        for p in self.root.iterdir():
            if p.name.startswith((PREFIX, f".{PREFIX}")) and p.name != f"{PREFIX}{keep}":
                shutil.rmtree(p, ignore_errors=True)

    def current(self) -> Cached | None:
        """The last applied revision, if one was ever cached (and is whole)."""
        link = self.root / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        if not target.startswith(PREFIX) or not target[len(PREFIX) :].isdigit():
            return None
        path = self.root / target
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        return Cached(int(target[len(PREFIX) :]), path, meta if isinstance(meta, dict) else {})
