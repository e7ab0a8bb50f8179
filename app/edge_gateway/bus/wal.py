"""The write-ahead log: a directory of append-only segment files, the uplink's source of truth.

Layout of a WAL directory:
    00000000000000000001.seg   segments, named by the seq of their first frame (ls order = seq order)
    00000000000000483211.seg   the newest one is the active segment, appended to by the writer
    cursors/mqtt.ack           one file per consumer: the highest seq it has acked (atomic replace)
    wal.meta                   {"next_seq": N}: written before segments are deleted, so seq survives GC
    .lock                      flock held by the running gateway; offline tools refuse to mutate under it

Durability: records are appended with os.write and made durable by group commit (`commit`,
one fsync per `flush_ms`). Only committed frames are visible to consumers.

Recovery (`Wal.open`): segment names are listed, never read, except the tail segment, which is
scanned record by record: a torn tail is truncated; a damaged stretch followed by valid
records is reported, counted (framebus_wal_corrupt_records_total, and the frames it held in
framebus_drop_total{reason="corrupt"}) and skipped. So opening a 2 GB WAL costs what
opening a 10 MB one does: one tail segment.

GC deletes whole segments whose every frame is acked by every consumer that has a cursor
file. `max_bytes` is enforced with `full_policy`: drop_oldest deletes the oldest segment even
if unacked and counts what was lost (framebus_drop_total{reason="wal_full"}); pause tells
the writer to hold the bus until consumers catch up.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from edge_gateway.bus import metrics, record
from edge_gateway.bus.cursor import Cursor, ReadHint
from edge_gateway.bus.frame import Frame
from edge_gateway.config.model import WalCfg

log = logging.getLogger(__name__)

SUFFIX = ".seg"
# Committed frames kept in memory for consumers close behind: every frame no consumer has acked yet,
# up to 2 × CACHE_FRAMES (then cut to CACHE_FRAMES). A frame costs ~170 bytes in memory; a consumer
# further behind (a backlog after an outage) reads the segment files, which is fast enough (ReadHint).
CACHE_FRAMES = 32768
READ_CHUNK = 1 << 20  # bytes per file read; a larger record is read whole


class WalLocked(RuntimeError):
    pass


def seg_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the directory: the file is old or new, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Wal:
    def __init__(self, cfg: WalCfg, readonly: bool = False) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.readonly = readonly
        self._cond = threading.Condition()
        self.segments: list[int] = []  # first seqs, sorted
        self.sizes: dict[int, int] = {}
        self.next_seq = 1
        self.committed_seq = 0
        self._fd: int | None = None  # active segment, opened for append
        self._active: int | None = None
        self._dirty = False
        self._pending_gap = False
        self._pending: list[Frame] = []
        self._cache: list[Frame] = []  # committed frames with consecutive seqs
        self._cache_first = 1
        self.acks: dict[str, int] = {}
        self._ack_dirty: set[str] = set()
        self._acks_durable: dict[str, int] = {}  # what each cursor file holds: GC goes by these
        self._lock_fd: int | None = None
        self.corrupt_found = 0
        self.lost_wal_full = 0

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, cfg: WalCfg, readonly: bool = False) -> Wal:
        wal = cls(cfg, readonly)
        if not readonly:
            wal.dir.mkdir(parents=True, exist_ok=True)
            (wal.dir / "cursors").mkdir(exist_ok=True)
            wal._take_lock()
        wal._recover()
        return wal

    def _take_lock(self) -> None:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WalLocked(f"WAL {self.dir} is in use by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _recover(self) -> None:
        names = sorted(p.name for p in self.dir.glob("*" + SUFFIX)) if self.dir.is_dir() else []
        self.segments = [int(n[: -len(SUFFIX)]) for n in names]
        for first in self.segments:
            self.sizes[first] = (self.dir / seg_name(first)).stat().st_size
        meta_next = self._read_meta()
        cursors = self.dir / "cursors"
        if cursors.is_dir():
            for p in cursors.glob("*.ack"):
                try:
                    self.acks[p.stem] = int(p.read_text().strip() or 0)
                except ValueError:
                    log.error("wal: cursor file %s is unreadable; treating %s as acked up to 0", p, p.stem)
                    self.acks[p.stem] = 0
        self._acks_durable = dict(self.acks)
        last = 0
        while self.segments:
            tail = self.segments[-1]
            last = self._recover_tail(tail)
            if last or self.readonly:
                break
            # nothing valid in the tail segment: it held no committed frame
            if not self.readonly:
                (self.dir / seg_name(tail)).unlink()
                _fsync_dir(self.dir)
            self.segments.pop()
            del self.sizes[tail]
        if not last and self.segments:
            last = self.segments[-1] - 1
        self.next_seq = max(meta_next, last + 1, 1)
        self.committed_seq = self.next_seq - 1
        self._cache_first = self.next_seq
        metrics.COMMITTED.set(self.committed_seq)
        self._update_size_metrics()

    def _read_meta(self) -> int:
        p = self.dir / "wal.meta"
        if not p.exists():
            return 1
        try:
            return int(json.loads(p.read_text())["next_seq"])
        except (ValueError, KeyError, TypeError):
            log.error("wal: %s is unreadable; seq continues from the segments", p)
            return 1

    def _recover_tail(self, first: int) -> int:
        """Scan the tail segment; truncate a torn tail, count corruption. Returns its last seq (0 if empty)."""
        path = self.dir / seg_name(first)
        data = path.read_bytes()
        last = 0
        good_end = 0
        prev_end_seq = first - 1
        for item in record.scan(data):
            if isinstance(item, record.Span):
                if item.first_seq > prev_end_seq + 1 and last:
                    self._count_corrupt(path, item.first_seq - prev_end_seq - 1)
                last = item.first_seq + item.count - 1
                prev_end_seq = last
                good_end = item.end
            elif item.torn:
                log.warning(
                    "wal: %s: torn tail of %d bytes at offset %d truncated",
                    path.name,
                    item.end - item.offset,
                    item.offset,
                )
                metrics.TRUNCATED.inc(item.end - item.offset)
            else:
                log.error(
                    "wal: %s: %d damaged bytes at offset %d skipped", path.name, item.end - item.offset, item.offset
                )
                metrics.CORRUPT.inc()
                self.corrupt_found += 1
        if not self.readonly:
            if good_end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            else:
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)  # what a killed process left in the page cache is durable from now on
                os.close(fd)
            self.sizes[first] = good_end
        return last

    def _count_corrupt(self, path: Path, frames: int) -> None:
        log.error("wal: %s: %d frames lost to corruption", path.name, frames)
        metrics.DROP.labels(reason="corrupt").inc(frames)

    # -- writing (the writer thread only) ----------------------------------------------------------
    def append(self, frames: list[Frame]) -> None:
        if not frames:
            return
        if frames[0].seq < self.next_seq:
            raise ValueError(f"seq {frames[0].seq} already used (next is {self.next_seq})")
        if frames[0].seq != self.next_seq:
            self._pending_gap = True
        if self._fd is None or self.sizes[self._active or 0] >= self.cfg.segment_bytes:
            self._roll(frames[0].seq)
        data = record.encode(frames)
        os.write(self._fd, data)  # type: ignore[arg-type]
        assert self._active is not None
        self.sizes[self._active] += len(data)
        self._pending.extend(frames)
        self.next_seq = frames[-1].seq + 1
        self._dirty = True

    def _roll(self, first_seq: int) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self.segments and self.sizes[self.segments[-1]] < self.cfg.segment_bytes and self._active is None:
            first_seq = self.segments[-1]  # continue the recovered tail segment
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._cond:
                self.segments.append(first_seq)
                self.sizes[first_seq] = 0
        self._fd = os.open(self.dir / seg_name(first_seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._active = first_seq
        _fsync_dir(self.dir)

    def commit(self) -> list[Frame]:
        """Group commit: fsync and make what was appended visible. Returns the newly committed frames."""
        if not self._dirty:
            return []
        os.fsync(self._fd)  # type: ignore[arg-type]
        done, self._pending = self._pending, []
        self._dirty = False
        with self._cond:
            if self._pending_gap or done[0].seq != self._cache_first + len(self._cache):
                self._cache, self._cache_first = [], done[0].seq
                self._pending_gap = False
            self._cache.extend(done)
            cut = 0
            if self.acks:  # what every consumer has acked is never read again (a rewind goes to ack + 1)
                cut = min(len(self._cache), max(0, min(self.acks.values()) + 1 - self._cache_first))
            if len(self._cache) - cut > 2 * CACHE_FRAMES:
                cut = len(self._cache) - CACHE_FRAMES
            if cut:
                del self._cache[:cut]
                self._cache_first += cut
            self.committed_seq = done[-1].seq
            self._cond.notify_all()
        metrics.COMMITTED.set(self.committed_seq)
        self._update_size_metrics()
        return done

    # -- consumers ---------------------------------------------------------------------------------
    def cursor(self, name: str) -> Cursor:
        with self._cond:
            if name not in self.acks:
                # A new consumer starts at the oldest frame still held, so it sees the whole backlog.
                self.acks[name] = (self.segments[0] - 1) if self.segments else self.committed_seq
                self._ack_dirty.add(name)
        if not self.readonly:
            self.persist_acks()
        return Cursor(self, name, self.acks[name])

    def rename_cursor(self, old: str, new: str) -> None:
        """A renamed consumer (a connector id changed by a reload) keeps its place instead of replaying
        the backlog, and the old name stops holding segments back from GC."""
        with self._cond:
            if old not in self.acks or new in self.acks:
                return
            self.acks[new] = self.acks.pop(old)
            self._ack_dirty.discard(old)
            self._ack_dirty.add(new)
        self.persist_acks()
        (self.dir / "cursors" / f"{old}.ack").unlink(missing_ok=True)
        with self._cond:
            self._acks_durable.pop(old, None)
        metrics.BACKLOG.remove(old)

    def ack(self, name: str, seq: int) -> None:
        with self._cond:
            if seq > self.acks.get(name, 0):
                self.acks[name] = min(seq, self.committed_seq)
                self._ack_dirty.add(name)

    def persist_acks(self) -> None:
        with self._cond:
            dirty, self._ack_dirty = self._ack_dirty, set()
            values = {n: self.acks[n] for n in dirty}
        for name, seq in values.items():
            atomic_write(self.dir / "cursors" / f"{name}.ack", f"{seq}\n".encode())
            with self._cond:
                self._acks_durable[name] = max(seq, self._acks_durable.get(name, 0))
        for name, seq in self.acks.items():
            metrics.BACKLOG.labels(consumer=name).set(max(0, self.committed_seq - seq))

    def wait_committed(self, after: int, timeout: float) -> bool:
        with self._cond:
            if self.committed_seq > after:
                return True
            self._cond.wait(timeout)
            return self.committed_seq > after

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def read(self, pos: int, max_frames: int, hint: ReadHint | None = None) -> list[Frame]:
        """Committed frames with seq >= pos (at most max_frames), from memory or from files.
        `hint` is a sequential reader's place in the files, updated in place."""
        with self._cond:
            committed = self.committed_seq
            if pos > committed:
                return []
            if self._cache and pos >= self._cache_first:
                i = pos - self._cache_first
                return self._cache[i : i + min(max_frames, committed - pos + 1)]
            segments = list(self.segments)
            active, limit = self._active, self.sizes.get(self._active or -1, 0)
        if hint is None:
            hint = ReadHint()
        out = self._take_held(hint, pos, max_frames, committed)
        if len(out) >= max_frames or hint.held:
            return out
        pos = out[-1].seq + 1 if out else pos
        return out + self._read_files(pos, max_frames - len(out), committed, segments, active, limit, hint)

    @staticmethod
    def _take_held(hint: ReadHint, pos: int, max_frames: int, committed: int) -> list[Frame]:
        """Frames from pos on out of the record the reader decoded last (its seqs are consecutive)."""
        held = hint.held
        if not held:
            return []
        if not held[0].seq <= pos <= held[-1].seq:
            hint.segment, hint.offset, hint.held = 0, 0, []  # the reader moved: find its place again
            return []
        i = pos - held[0].seq
        n = max(0, min(max_frames, committed - pos + 1, len(held) - i))
        out = held[i : i + n]
        hint.held = held[i + n :]
        return out

    def _read_files(
        self,
        pos: int,
        max_frames: int,
        committed: int,
        segments: list[int],
        active: int | None,
        limit: int,
        hint: ReadHint,
    ) -> list[Frame]:
        if not segments:
            return []
        i = max(0, bisect.bisect_right(segments, pos) - 1)
        out: list[Frame] = []
        while i < len(segments) and len(out) < max_frames:
            first = segments[i]
            offset = hint.offset if hint.segment == first else 0
            try:
                with open(self.dir / seg_name(first), "rb") as f:
                    available = (limit if first == active else os.fstat(f.fileno()).st_size) - offset
                    f.seek(offset)
                    data = f.read(max(0, min(available, READ_CHUNK)))
                    need = record.declared_size(data)
                    if need is not None and len(data) < need <= available:
                        data += f.read(need - len(data))  # one record larger than a chunk
            except FileNotFoundError:  # deleted by GC or drop_oldest under us: skip ahead
                i += 1
                hint.segment, hint.offset = (segments[i], 0) if i < len(segments) else (0, 0)
                continue
            consumed = 0
            for item in record.scan(data):
                if isinstance(item, record.Damage):
                    if item.torn:
                        break  # a record cut by the chunk: read it in the next round
                    consumed = item.end  # corruption: counted when the segment was opened or written
                    continue
                end_seq = item.first_seq + item.count - 1
                if item.first_seq > committed:
                    break
                consumed = item.end
                if end_seq < pos:
                    continue
                hint.held = record.decode(
                    item.first_seq, item.count, memoryview(data)[item.offset + record.HEADER_SIZE : item.end]
                )
                out.extend(self._take_held(hint, max(pos, item.first_seq), max_frames - len(out), committed))
                if hint.held:
                    break
            hint.segment, hint.offset = first, offset + consumed
            if len(out) >= max_frames or hint.held or (consumed < len(data) and data):
                break
            i += 1
            if i < len(segments):
                hint.segment, hint.offset = segments[i], 0
        return out

    # -- space -------------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def min_ack(self) -> int:
        with self._cond:
            return min(self.acks.values()) if self.acks else 0  # no consumer yet: keep everything

    def gc(self) -> int:
        """Delete whole segments every consumer has acked. Returns bytes freed.
        It goes by the acks persisted in the cursor files (persisting the dirty ones first): an ack held
        only in memory would leave, after a power cut, a cursor pointing into deleted frames."""
        self.persist_acks()
        with self._cond:
            low = min(self._acks_durable.get(n, 0) for n in self.acks) if self.acks else 0
        freed = 0
        while len(self.segments) > 1 and self.segments[1] - 1 <= low:
            freed += self._delete_oldest()
        return freed

    def drop_oldest(self) -> int:
        """full_policy drop_oldest: delete the oldest segment even if unacked; count what was lost."""
        if len(self.segments) < 2:
            return 0
        first, nxt = self.segments[0], self.segments[1]
        lost = max(0, nxt - max(first, self.min_ack() + 1))
        if lost:
            log.error(
                "wal: full (%d bytes > max_bytes %d): dropped %d unacked frames %d..%d",
                self.total_bytes,
                self.cfg.max_bytes,
                lost,
                nxt - lost,
                nxt - 1,
            )
            metrics.DROP.labels(reason="wal_full").inc(lost)
            self.lost_wal_full += lost
        return self._delete_oldest()

    def _delete_oldest(self) -> int:
        atomic_write(self.dir / "wal.meta", json.dumps({"next_seq": self.next_seq}).encode())
        with self._cond:
            first = self.segments.pop(0)
            size = self.sizes.pop(first)
            keep_from = self.segments[0]
            if self._cache and self._cache_first < keep_from:  # memory never serves what disk no longer has
                cut = min(len(self._cache), keep_from - self._cache_first)
                del self._cache[:cut]
                self._cache_first += cut
        (self.dir / seg_name(first)).unlink(missing_ok=True)
        self._update_size_metrics()
        return size

    def _update_size_metrics(self) -> None:
        metrics.WAL_BYTES.set(self.total_bytes)
        metrics.WAL_SEGMENTS.set(len(self.segments))

    def close(self) -> None:
        if self.readonly:
            return
        if self._fd is not None:
            self.commit()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        self.persist_acks()
        atomic_write(self.dir / "wal.meta", json.dumps({"next_seq": self.next_seq}).encode())
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stats(self) -> dict[str, object]:
        with self._cond:
            return {
                "dir": str(self.dir),
                "segments": len(self.segments),
                "bytes": self.total_bytes,
                "first_seq": self.segments[0] if self.segments else self.next_seq,
                "committed_seq": self.committed_seq,
                "next_seq": self.next_seq,
                "cursors": {
                    n: {"acked": a, "lag": max(0, self.committed_seq - a)} for n, a in sorted(self.acks.items())
                },
            }
