"""The outcome of the last N command seqs, so a replayed command is answered, never executed twice.

A command seq names one command of one device. The broker redelivers a QoS 1 command after a lost
PUBACK, and a cloud retries after a lost ack: both arrive with the same seq and must get the first
outcome again instead of a second Modbus write. `SeqLedger` remembers, per seq, a fingerprint of
the command (tag + value) and its outcome, for the last `capacity` seqs (LRU by arrival).

Persistence: with a `path`, every change is appended as one JSON line and the file is rewritten by
atomic replace when it holds twice `capacity` lines. The `pending` line, written before a write is
handed to a line, is fdatasync'd first: a seq whose write may have reached the device but whose
outcome never made it to the file (the process died or the power went in between) comes back as
`interrupted`, and its replay is refused rather than written a second time. Outcome lines are only
`write()`n: one lost to a power cut leaves the pending line, which is the safe answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edge_gateway.core.durable import fsync_dir

log = logging.getLogger(__name__)

PENDING = "pending"


@dataclass(frozen=True)
class Entry:
    fp: str  # fingerprint of the command: tag and value (what a replay must match)
    tag: str
    result: str  # ok | fail | pending (the write is on its way)
    reason: str
    error: str | None = None


class SeqLedger:
    def __init__(self, path: Path | str | None = None, capacity: int = 4096) -> None:
        self.capacity = max(1, capacity)
        self._path = Path(path) if path is not None else None
        self._d: OrderedDict[int, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines = 0
        if self._path is not None:
            self._load(self._path)
            self._rewrite()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, seq: int) -> Entry | None:
        with self._lock:
            return self._d.get(seq)

    def put(self, seq: int, entry: Entry) -> None:
        with self._lock:
            self._d.pop(seq, None)
            self._d[seq] = entry
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
            self._append({"seq": seq, **entry.__dict__}, durable=entry.result == PENDING)

    def forget(self, seq: int) -> None:
        """The command never reached a line (a transient refusal): a retry may run it."""
        with self._lock:
            if self._d.pop(seq, None) is not None:
                self._append({"seq": seq, "forget": True})

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- file ----------------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("command ledger %s unreadable (%s): replays of earlier commands are not recognised", path, e)
            return
        bad = 0
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                seq = rec["seq"]
                if rec.get("forget"):
                    self._d.pop(seq, None)
                    continue
                ent = Entry(str(rec["fp"]), str(rec["tag"]), str(rec["result"]), str(rec["reason"]), rec.get("error"))
            except (ValueError, KeyError, TypeError):
                bad += 1  # a torn last line after a power cut
                continue
            if ent.result == PENDING:
                why = "the gateway stopped while this write was in progress: its outcome is unknown"
                ent = Entry(ent.fp, ent.tag, "fail", "interrupted", why)
            self._d.pop(seq, None)
            self._d[seq] = ent
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
        if bad:
            log.warning("command ledger %s: %d unreadable line(s) skipped", path, bad)

    def _append(self, rec: dict[str, object], durable: bool = False) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
            if durable:
                os.fdatasync(self._fd)
        except OSError as e:
            log.error("command ledger %s: %s", self._path, e)
            return
        self._lines += 1
        if self._lines >= 2 * self.capacity + 64:
            self._rewrite()

    def _rewrite(self) -> None:
        """The current entries, written aside and renamed over the file (fsynced), then appended to."""
        assert self._path is not None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_name(self._path.name + ".tmp")
            body = "".join(
                json.dumps({"seq": s, **e.__dict__}, separators=(",", ":")) + "\n" for s, e in self._d.items()
            )
            with open(tmp, "wb") as f:
                f.write(body.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            with contextlib.suppress(OSError):
                fsync_dir(self._path.parent)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._lines = len(self._d)
        except OSError as e:
            log.error("command ledger %s cannot be written (%s): replays are known to this process only", self._path, e)
