"""The worker table: which worker thread serves which endpoint, and which driver plugin owns it.

One owner, copy-on-write: writers (start, stop, a reload, the supervisor's restart) change the table
only under its lock and publish a new immutable mapping in one assignment; readers (`summary()` on
the supervisor thread, `status()` on control threads, the write router on the MQTT thread) take
`snapshot()` — no lock, never a "dictionary changed size during iteration", and a reader sees one
table, never half of a change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Entry:
    plugin: str  # the driver plugin's name
    worker: Any  # the thread (edge_gateway.core.driver.Worker)


class WorkerTable:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._table: Mapping[str, Entry] = MappingProxyType({})

    def snapshot(self) -> Mapping[str, Entry]:
        """The current table: immutable, safe to iterate from any thread."""
        return self._table

    def get(self, endpoint_id: str) -> Entry | None:
        return self._table.get(endpoint_id)

    def worker(self, endpoint_id: str) -> Any:
        e = self._table.get(endpoint_id)
        return e.worker if e is not None else None

    def of(self, plugin: str) -> dict[str, Any]:
        """endpoint id → worker, for one plugin."""
        return {k: e.worker for k, e in self._table.items() if e.plugin == plugin}

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextmanager
    def edit(self) -> Iterator[dict[str, Entry]]:
        """`with table.edit() as t: t[ep] = Entry(...)`: the change is published when the block ends."""
        with self._lock:
            draft = dict(self._table)
            yield draft
            self._table = MappingProxyType(draft)

    def put(self, endpoint_id: str, plugin: str, worker: Any) -> None:
        with self.edit() as t:
            if worker is None:
                t.pop(endpoint_id, None)
            else:
                t[endpoint_id] = Entry(plugin, worker)

    def pop(self, endpoint_id: str) -> Entry | None:
        with self.edit() as t:
            return t.pop(endpoint_id, None)

    def __len__(self) -> int:
        return len(self._table)
