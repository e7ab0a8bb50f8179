"""The write-ahead log: a directory of append-only segment files, the uplink's source of truth.

Layout of a WAL directory:
    00000000000000000001.seg   segments, named by the seq of their first frame (ls order = seq order)
    00000000000000483211.seg   the newest one is the active segment, appended to by the writer
    cursors/mqtt.ack           one file per consumer: the highest seq it has acked (atomic replace)
    wal.meta                   {"next_seq": N}: written before segments are deleted, so seq survives GC
    damage.json                damaged stretches found so far and their totals (what `edge-bus stats` shows)
    .lock                      flock held by the running gateway; offline tools refuse to mutate under it
Other files are ignored; a `*.seg` whose name is not 20 digits is ignored with a warning.

Invariants: within a segment, records hold consecutive seqs starting at the segment's name, and
a segment ends where the next one's name begins. Bytes below a segment's committed size never
change: closed segments are immutable and the active one only grows.

Durability: `append` only buffers; `commit` (group commit, one per `flush_ms`) writes the
buffered records at the active segment's committed size, fsyncs, and only then moves the
committed size and seq, making the frames visible to consumers. If the write or the fsync
fails (ENOSPC, EIO), the segment is cut back to its committed size, the frames stay buffered
and the error goes to the writer, which retries (see writer.py): a reader never sees a record
that is not durable whole, and a seq is never handed out to two different frames.

Recovery (`Wal.open`), as in SQLite and Kafka: segment names are listed, never read, except the
tail segment, which is scanned: a torn tail (no valid record after it) is what a crash left of an
uncommitted write, and is truncated; damage followed by valid records is corruption. So opening
a 2 GB WAL costs what opening a 10 MB one does: one tail segment. next_seq is the highest of
wal.meta, the tail's last seq + 1 and the newest segment's name (a name is a seq already handed out).

Damage in older segments is found when a consumer reads them. Everything below a segment's
committed size is complete, so a record that does not check there is corruption, never "not
written yet" (only the growing tail of a live gateway, seen by an offline reader, may end in a
record still being written). The reader resynchronises at the next offset where the record magic
starts a record whose CRC checks (`record.scan`), and everything after the damage is read. Each
damaged stretch is reported once per WAL (keyed by segment and offset, remembered in damage.json
across restarts): logged with segment and offset, counted in framebus_wal_corrupt_records_total,
framebus_wal_corrupt_bytes_total, and the seqs missing around it in
framebus_drop_total{reason="corrupt"}. A segment cut exactly at a record boundary has no damaged
byte, but its missing seqs (up to the next segment's name) are reported the same way.

GC deletes whole segments whose every frame is acked by every consumer that has a cursor
file. `max_bytes` is enforced with `full_policy`: drop_oldest deletes the oldest segment even
if unacked and counts what was lost (framebus_drop_total{reason="wal_full"}); pause tells
the writer to hold the bus until consumers catch up.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_gateway.bus import metrics, record
from edge_gateway.bus.cursor import Cursor, ReadHint
from edge_gateway.config.model import WalCfg
from edge_gateway.core.durable import atomic_write, fsync_dir
from edge_gateway.core.frame import Frame, FrameBlock

log = logging.getLogger(__name__)

SUFFIX = ".seg"
_SEGMENT = re.compile(r"\d{20}\.seg")
DAMAGE_FILE = "damage.json"
# Committed frames kept in memory for consumers close behind, as the blocks of their records (their
# stored JSON, record.Block): every frame no consumer has acked yet, up to 2 × CACHE_FRAMES (then cut to
# CACHE_FRAMES; whole blocks go, so up to one record more stays). A frame costs ~100 bytes there; a
# consumer further behind (a backlog after an outage) reads the segment files (ReadHint).
CACHE_FRAMES = 32768
READ_CHUNK = 1 << 20  # bytes per file read; a larger record is read whole


class WalLocked(RuntimeError):
    pass


def seg_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def errno_name(e: OSError) -> str:
    """`enospc`, `eio`, ...: the label of a write fault."""
    return errno.errorcode.get(e.errno or 0, "oserror").lower()


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)  # a short write is followed by the error that cut it
        view, offset = view[n:], offset + n


@dataclass(frozen=True, slots=True)
class Stretch:
    """A damaged stretch of a segment: `bytes` that are no valid record, `frames` seqs missing there."""

    segment: int
    offset: int
    bytes: int
    frames: int

    def as_json(self) -> dict[str, object]:
        return {"segment": seg_name(self.segment), "offset": self.offset, "bytes": self.bytes, "frames": self.frames}


class Wal:
    def __init__(self, cfg: WalCfg, readonly: bool = False) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.readonly = readonly
        self._cond = threading.Condition()
        self.segments: list[int] = []  # first seqs, sorted
        self.sizes: dict[int, int] = {}  # committed bytes per segment (the active one grows at each commit)
        self.next_seq = 1
        self.committed_seq = 0
        self._fd: int | None = None  # active segment, opened for writing
        self._active: int | None = None
        self._seg_next = 1  # the seq the next record of the active (or recovered tail) segment starts with
        self._unwritten = 0  # frames appended, not yet committed (only their records are kept)
        self._buf = bytearray()  # their records
        self._records: list[tuple[int, record.Block]] = []  # (bytes, block) of each record in _buf
        self._cut_pending = False
        self._cache: list[record.Block] = []  # committed blocks with consecutive seqs, up to committed_seq
        self._cache_seqs: list[int] = []  # their first seqs
        self._cache_first = 1  # the first seq the cache serves (its first block may start below)
        self.acks: dict[str, int] = {}
        self._ack_dirty: set[str] = set()
        self._persist_failing = False
        self._acks_durable: dict[str, int] = {}  # what each cursor file holds: GC goes by these
        self._lock_fd: int | None = None
        self.fault: str | None = None  # errno name while commits fail
        self._damage: dict[tuple[int, int], Stretch] = {}
        self._damage_dirty = False
        self.corrupt_records = self.corrupt_bytes = self.corrupt_frames = 0  # since the WAL was created
        self.dropped_wal_full = 0  # by this process

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

    def _list_segments(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if not p.name.endswith(SUFFIX):
                continue
            if _SEGMENT.fullmatch(p.name) and p.is_file():
                out.append(int(p.name[: -len(SUFFIX)]))
            else:
                log.warning("wal: %s is not a segment (<20-digit first seq>.seg file): ignored", p)
        return sorted(out)

    def _recover(self) -> None:
        self.segments = self._list_segments()
        for first in self.segments:
            self.sizes[first] = (self.dir / seg_name(first)).stat().st_size
        floor = self.segments[-1] if self.segments else 1
        meta_next = self._read_meta()
        self._load_damage()
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
            (self.dir / seg_name(tail)).unlink()
            fsync_dir(self.dir)
            self.segments.pop()
            del self.sizes[tail]
        self.next_seq = max(meta_next, last + 1, floor)
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
        """Scan the tail segment; report damage, truncate a torn tail. Returns its last seq (0 if empty)."""
        path = self.dir / seg_name(first)
        data = path.read_bytes()
        hint = ReadHint(first, 0, first)
        last = 0
        for span in self._walk(first, data, 0, hint, final=False, nxt=0, committed=1 << 64):
            last = span.first_seq + span.count - 1
        good_end = hint.offset
        if good_end < len(data):
            log.warning(
                "wal: %s: torn tail of %d bytes at offset %d truncated", path.name, len(data) - good_end, good_end
            )
            metrics.TRUNCATED.inc(len(data) - good_end)
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
        self._seg_next = hint.seq
        return last

    # -- damage ------------------------------------------------------------------------------------
    def _walk(
        self, first: int, data: bytes, base: int, hint: ReadHint, final: bool, nxt: int, committed: int
    ) -> Iterator[record.Span]:
        """The valid records of `data` (bytes of segment `first` from offset `base` = hint.offset), reporting
        the damage between them; hint.offset and hint.seq move past each record as it is yielded. A bad
        stretch that runs to the end of `data` is damage (the seqs up to `nxt` are missing) only if `final`:
        the segment ends there and cannot grow. Otherwise the walk stops before it: the rest of a record
        cut by the read, or one not written yet. The walk also stops before a record not yet committed."""
        damaged_at: int | None = None
        for item in record.scan(data):
            if isinstance(item, record.Damage):
                if not item.torn:
                    damaged_at = base + item.offset
                    continue
                if final:
                    self._report(first, base + item.offset, base + item.end, hint.seq, nxt)
                    hint.offset, hint.seq = base + item.end, max(hint.seq, nxt)
                return
            if item.first_seq > committed:
                return
            start = base + item.offset
            if damaged_at is not None or item.first_seq > hint.seq:
                self._report(first, start if damaged_at is None else damaged_at, start, hint.seq, item.first_seq)
                damaged_at = None
            hint.offset, hint.seq = base + item.end, max(hint.seq, item.first_seq + item.count)
            yield item

    def _report(self, first: int, start: int, end: int, seq: int, nxt: int) -> None:
        """One damaged stretch (bytes start..end, seqs seq..nxt-1 missing): logged and counted once per WAL."""
        lost = max(0, nxt - seq)
        with self._cond:
            if (first, start) in self._damage:
                return
            self._damage[(first, start)] = Stretch(first, start, end - start, lost)
            self._damage_dirty = True
            self.corrupt_records += 1
            self.corrupt_bytes += end - start
            self.corrupt_frames += lost
        log.error(
            "wal: %s: %d damaged bytes at offset %d skipped; %d frames lost%s",
            seg_name(first),
            end - start,
            start,
            lost,
            f" (seq {seq}..{nxt - 1})" if lost else "",
        )
        metrics.CORRUPT.inc()
        metrics.CORRUPT_BYTES.inc(end - start)
        metrics.DROP.labels(reason="corrupt").inc(lost)

    def _load_damage(self) -> None:
        p = self.dir / DAMAGE_FILE
        if not p.exists():
            return
        try:
            doc = json.loads(p.read_text())
            self.corrupt_records, self.corrupt_bytes, self.corrupt_frames = (
                int(doc["records"]),
                int(doc["bytes"]),
                int(doc["frames"]),
            )
            for d in doc["stretches"]:
                s = Stretch(int(d["segment"]), int(d["offset"]), int(d["bytes"]), int(d["frames"]))
                self._damage[(s.segment, s.offset)] = s
        except (ValueError, KeyError, TypeError):
            log.error("wal: %s is unreadable; damage already reported may be reported again", p)

    def _persist_damage(self) -> None:
        with self._cond:
            if not self._damage_dirty:
                return
            self._damage_dirty = False
            doc = {
                "records": self.corrupt_records,
                "bytes": self.corrupt_bytes,
                "frames": self.corrupt_frames,
                "stretches": [
                    {"segment": s.segment, "offset": s.offset, "bytes": s.bytes, "frames": s.frames}
                    for s in self._damage.values()
                ],
            }
        try:
            atomic_write(self.dir / DAMAGE_FILE, json.dumps(doc).encode())
        except OSError as e:
            with self._cond:
                self._damage_dirty = True
            self._persist_failed(e)

    # -- writing (the writer thread only) ----------------------------------------------------------
    def append(self, frames: Sequence[Frame | FrameBlock]) -> None:
        """Buffer frames and blocks (seqs following on from next_seq) as one record for the next commit."""
        if not frames:
            return
        if frames[0].seq < self.next_seq:
            raise ValueError(f"seq {frames[0].seq} already used (next is {self.next_seq})")
        if frames[0].seq != self.next_seq:
            raise ValueError(f"seq gap: {frames[0].seq} after {self.next_seq - 1}")
        data, block = record.encode(frames)
        self._buf += data
        self._records.append((len(data), block))
        self._unwritten += block.count
        self.next_seq = block.first_seq + block.count

    @property
    def unwritten(self) -> int:
        """Frames appended and not committed yet (held across failed commits)."""
        return self._unwritten

    def commit(self) -> list[record.Run]:
        """Group commit: write the buffered records, fsync, make them visible; returns the frames newly
        committed (as runs: the frame objects are dropped once encoded, so they die young). Records go to
        the active segment until it reaches segment_bytes, then to a new one; each segment's share is
        written, fsynced and published in turn. On OSError the segment is cut back to its committed size
        and the frames stay buffered for the next call; the error propagates (and `fault` names it) unless
        an earlier share was committed by this call: those frames are returned, and the next call meets
        the error again."""
        done: list[record.Run] = []
        while self._records:
            try:
                n_bytes, n_frames, n_records = self._write_share()
            except OSError as e:
                self._cut_back()
                metrics.WRITE_ERRORS.labels(reason=errno_name(e)).inc()
                if done:
                    log.warning("wal: commit cut short (%s); %d frames wait for the next one", e, self._unwritten)
                    return done
                self._set_fault(e)
                raise
            done += self._publish(n_bytes, n_frames, n_records)
        self._set_fault(None)
        return done

    def _write_share(self) -> tuple[int, int, int]:
        """Write and fsync the buffered records that belong in the active segment (rolling first if it is
        full): bytes, frames and records written."""
        if self._cut_pending and self._fd is not None and self._active is not None:
            os.ftruncate(self._fd, self.sizes[self._active])
            self._cut_pending = False
        first = self._records[0][1].first_seq
        if self._fd is None or self.sizes[self._active or 0] >= self.cfg.segment_bytes or first != self._seg_next:
            self._roll(first)
        assert self._fd is not None and self._active is not None
        start = self.sizes[self._active]
        n_bytes = n_frames = n_records = 0
        for size, block in self._records:
            n_bytes, n_frames, n_records = n_bytes + size, n_frames + block.count, n_records + 1
            if start + n_bytes >= self.cfg.segment_bytes:
                break
        _pwrite_all(self._fd, self._buf[:n_bytes], start)  # a copy: _buf is cut after the write
        os.fsync(self._fd)
        return n_bytes, n_frames, n_records

    def _publish(self, n_bytes: int, n_frames: int, n_records: int) -> list[record.Run]:
        """What _write_share made durable becomes visible: committed size and seq, the memory cache."""
        assert self._active is not None
        blocks = [b for _size, b in self._records[:n_records]]
        self._unwritten -= n_frames
        del self._buf[:n_bytes]
        del self._records[:n_records]
        self._seg_next = blocks[-1].first_seq + blocks[-1].count
        with self._cond:
            self.sizes[self._active] += n_bytes
            if not self._cache:
                self._cache_first = blocks[0].first_seq
            self._cache.extend(blocks)
            self._cache_seqs.extend(b.first_seq for b in blocks)
            self.committed_seq = self._seg_next - 1
            keep_from = self._cache_first
            if self.acks:  # what every consumer has acked is never read again (a rewind goes to ack + 1)
                keep_from = max(keep_from, min(self.acks.values()) + 1)
            if self.committed_seq + 1 - keep_from > 2 * CACHE_FRAMES:
                keep_from = self.committed_seq + 1 - CACHE_FRAMES
            self._cut_cache(keep_from)
            self._cond.notify_all()
        metrics.COMMITTED.set(self.committed_seq)
        self._update_size_metrics()
        return [record.Run(b, 0, b.count) for b in blocks]

    def _cut_cache(self, seq: int) -> None:
        """The cache serves seqs from `seq` on (under _cond): whole blocks below it go."""
        seq = min(seq, self.committed_seq + 1)
        if seq <= self._cache_first:
            return
        k = bisect.bisect_right(self._cache_seqs, seq) - 1  # the block holding seq (or the last one)
        if k > 0:
            del self._cache[:k]
            del self._cache_seqs[:k]
        self._cache_first = seq

    @property
    def cached_frames(self) -> int:
        """Committed frames the memory cache serves."""
        with self._cond:
            return self.committed_seq + 1 - self._cache_first if self._cache else 0

    def _cut_back(self) -> None:
        """After a failed write or fsync: the active segment loses what lies past its committed size (a
        partly written record, pages whose fsync failed). If even that fails, it is retried first thing
        at the next commit; readers never look past the committed size anyway."""
        if self._fd is None or self._active is None:
            return
        try:
            os.ftruncate(self._fd, self.sizes[self._active])
        except OSError as e:
            log.error("wal: cannot cut %s back to %d bytes: %s", seg_name(self._active), self.sizes[self._active], e)
            self._cut_pending = True

    def _set_fault(self, e: OSError | None) -> None:
        reason = None if e is None else errno_name(e)
        if reason == self.fault:
            return
        if self.fault is not None:
            metrics.FAULT.labels(reason=self.fault).set(0)
        if e is None:
            log.warning("wal: commits succeed again (after %s)", self.fault)
        else:
            log.error("wal: commit failed (%s); %d frames held for the next try", e, self._unwritten)
            metrics.FAULT.labels(reason=reason).set(1)
        self.fault = reason

    def _roll(self, first_seq: int) -> None:
        """Write into segment `first_seq` from now on, or into the recovered tail when it has room and its
        seqs go on from there. The segment joins `segments` only once its file exists and is fsynced."""
        if self._fd is not None:
            os.close(self._fd)  # every commit fsynced it
            self._fd, self._active = None, None
        tail = self.segments[-1] if self.segments else None
        if tail is not None and self.sizes[tail] < self.cfg.segment_bytes and first_seq == self._seg_next:
            self._fd, self._active = os.open(self.dir / seg_name(tail), os.O_WRONLY), tail
            return
        fd = os.open(self.dir / seg_name(first_seq), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        with self._cond:
            if first_seq not in self.sizes:
                self.segments.append(first_seq)
            self.sizes[first_seq] = 0
        self._fd, self._active, self._seg_next = fd, first_seq, first_seq

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

    def persist(self) -> None:
        """Acks and the damage record to disk. What cannot be written now (a full disk) stays dirty and is
        tried again at the next call: an ack that is not yet on disk only means a resend after a crash."""
        self.persist_acks()
        self._persist_damage()

    def persist_acks(self) -> None:
        with self._cond:
            dirty, self._ack_dirty = self._ack_dirty, set()
            values = {n: self.acks[n] for n in dirty}
        failed: OSError | None = None
        for name, seq in values.items():
            try:
                atomic_write(self.dir / "cursors" / f"{name}.ack", f"{seq}\n".encode())
            except OSError as e:
                failed = e
                with self._cond:
                    self._ack_dirty.add(name)
                continue
            with self._cond:
                self._acks_durable[name] = max(seq, self._acks_durable.get(name, 0))
        if failed is not None:
            self._persist_failed(failed)
        elif values and self._persist_failing:
            log.warning("wal: cursors are persisted again")
            self._persist_failing = False
        for name, seq in self.acks.items():
            metrics.BACKLOG.labels(consumer=name).set(max(0, self.committed_seq - seq))

    def _persist_failed(self, e: OSError) -> None:
        if not self._persist_failing:
            log.error("wal: cannot persist cursors/damage record (%s): retried at every commit", e)
        self._persist_failing = True

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
        """Committed frames with seq >= pos (at most max_frames), decoded (`read_runs` is the uplink's)."""
        return [f for r in self.read_runs(pos, max_frames, hint) for f in r.frames()]

    def read_runs(self, pos: int, max_frames: int, hint: ReadHint | None = None) -> list[record.Run]:
        """Committed frames with seq >= pos (at most max_frames) as runs of stored blocks, from memory or
        from files, in seq order. `hint` is a sequential reader's place in the files, updated in place."""
        with self._cond:
            committed = self.committed_seq
            if pos > committed:
                return []
            if self._cache and pos >= self._cache_first:
                return self._read_cache(pos, min(max_frames, committed - pos + 1))
            segments = list(self.segments)
            ends = None if self.readonly else dict(self.sizes)
        if hint is None:
            hint = ReadHint()
        out = self._take_held(hint, pos, max_frames, committed)
        got = sum(r.count for r in out)
        if got >= max_frames or hint.held is not None:
            return out
        pos = out[-1].last_seq + 1 if out else pos
        return out + self._read_files(pos, max_frames - got, committed, segments, ends, hint)

    def _read_cache(self, pos: int, n: int) -> list[record.Run]:
        """n frames from pos on, all in the cache (under _cond)."""
        out = []
        k = bisect.bisect_right(self._cache_seqs, pos) - 1
        while n > 0:
            run = record.Run(self._cache[k], 0, self._cache[k].count).tail(pos, n)
            out.append(run)
            n -= run.count
            pos += run.count
            k += 1
        return out

    @staticmethod
    def _take_held(hint: ReadHint, pos: int, max_frames: int, committed: int) -> list[record.Run]:
        """Frames from pos on out of the record the reader decoded last (its seqs are consecutive)."""
        held = hint.held
        if held is None:
            return []
        if not held.first_seq <= pos <= held.last_seq:
            hint.segment, hint.offset, hint.held = 0, 0, None  # the reader moved: find its place again
            return []
        n = max(0, min(max_frames, committed - pos + 1))
        if n == 0:
            return []
        out = held.tail(pos, n)
        hint.held = record.Run(held.block, out.hi, held.hi) if out.hi < held.hi else None
        return [out]

    def _read_files(
        self,
        pos: int,
        max_frames: int,
        committed: int,
        segments: list[int],
        ends: dict[int, int] | None,
        hint: ReadHint,
    ) -> list[record.Run]:
        """Read on through the segments from pos. `ends`: each segment's committed size (None for a read-only
        view, which reads the files as they are and treats the newest one as possibly still growing)."""
        out: list[record.Run] = []
        i = max(0, bisect.bisect_right(segments, pos) - 1)
        while i < len(segments) and sum(r.count for r in out) < max_frames and hint.held is None:
            first = segments[i]
            last = i == len(segments) - 1
            nxt = committed + 1 if last else segments[i + 1]
            if hint.segment != first:
                hint.segment, hint.offset, hint.seq = first, 0, first
            end = None if ends is None else ends.get(first, 0)
            try:
                if not self._read_segment(
                    first, end, nxt, ends is None and last, committed, pos, max_frames, hint, out
                ):
                    break
            except FileNotFoundError:  # deleted by GC or drop_oldest under us: skip ahead
                hint.seq = nxt
            if not last and hint.seq < nxt:  # cut at a record boundary: no damaged byte, seqs missing
                self._report(first, hint.offset, hint.offset, hint.seq, nxt)
                hint.seq = nxt
            i += 1
        return out

    def _read_segment(
        self,
        first: int,
        end: int | None,
        nxt: int,
        growing: bool,
        committed: int,
        pos: int,
        max_frames: int,
        hint: ReadHint,
        out: list[record.Run],
    ) -> bool:
        """Decode records of one segment from hint.offset into `out`; True once it is read to its end.
        Reads go in READ_CHUNK pieces; when a piece holds no whole record from its start (damage, or a
        damaged record claiming a length past the chunk), the rest of the segment is read at once to find
        the next valid record."""
        with open(self.dir / seg_name(first), "rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            end = size if end is None else min(end, size)
            whole = False
            while hint.offset < end:
                off = hint.offset
                want = end - off if whole else min(end - off, READ_CHUNK)
                data = os.pread(fd, want, off)
                need = record.declared_size(data)
                if need is not None and len(data) < need <= end - off:
                    data += os.pread(fd, need - len(data), off + len(data))  # one record larger than a chunk
                if len(data) < want:  # the file is shorter than it was (damage under a running reader)
                    end = off + len(data)
                final = not growing and off + len(data) >= end
                for span in self._walk(first, data, off, hint, final, nxt, committed):
                    cur = out[-1].last_seq + 1 if out else pos
                    if span.first_seq + span.count <= cur:
                        continue
                    body = memoryview(data)[span.offset + record.HEADER_SIZE : span.end]
                    block = record.decode_block(span.version, span.first_seq, span.count, body)
                    hint.held = record.Run(block, 0, block.count)
                    got = sum(r.count for r in out)
                    taken = self._take_held(hint, max(cur, span.first_seq), max_frames - got, committed)
                    out.extend(taken)
                    if hint.held is not None or got + sum(r.count for r in taken) >= max_frames:
                        return False
                if hint.offset == off:  # not one whole record from here in this piece
                    if off + len(data) >= end:
                        return False  # the newest segment of a live WAL: the rest is not written yet
                    whole = True
                else:
                    whole = False
        return True

    # -- space -------------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def first_seq(self) -> int:
        """The oldest seq the WAL still holds (committed_seq + 1 when it holds none), read under the
        lock GC and the writer change `segments` under."""
        with self._cond:
            return self.segments[0] if self.segments else self.committed_seq + 1

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

    def drop_oldest(self, why: str) -> int:
        """full_policy drop_oldest: delete the oldest segment even if unacked; count what was lost."""
        if len(self.segments) < 2:
            return 0
        first, nxt = self.segments[0], self.segments[1]
        lost = max(0, nxt - max(first, self.min_ack() + 1))
        if lost:
            log.error("wal: %s: dropped %d unacked frames %d..%d", why, lost, nxt - lost, nxt - 1)
            metrics.DROP.labels(reason="wal_full").inc(lost)
            self.dropped_wal_full += lost
        return self._delete_oldest()

    def _delete_oldest(self) -> int:
        self._write_meta()
        first = self.segments[0]
        (self.dir / seg_name(first)).unlink(missing_ok=True)
        with self._cond:
            self.segments.pop(0)
            size = self.sizes.pop(first)
            if self._cache_first < self.segments[0]:  # memory never serves what disk no longer has
                self._cut_cache(self.segments[0])
            for key in [k for k in self._damage if k[0] == first]:
                del self._damage[key]
                self._damage_dirty = True
        self._update_size_metrics()
        return size

    def _write_meta(self) -> None:
        """Seq survives even a WAL whose segments are all gone. Needing a new file, this fails on a full
        disk; the newest segment's name still bounds next_seq then, and that one is never deleted."""
        try:
            atomic_write(self.dir / "wal.meta", json.dumps({"next_seq": self.committed_seq + 1}).encode())
        except OSError as e:
            log.warning("wal: cannot write wal.meta (%s); seq continues from the newest segment", e)

    def _update_size_metrics(self) -> None:
        metrics.WAL_BYTES.set(self.total_bytes)
        metrics.WAL_SEGMENTS.set(len(self.segments))

    def close(self) -> None:
        if self.readonly:
            return
        if self._records:
            try:
                self.commit()
            except OSError as e:
                n = self._unwritten
                log.error("wal: closing with %d frames that could not be written (%s): lost", n, e)
                metrics.DROP.labels(reason="wal_error").inc(n)
                self._unwritten, self._buf, self._records = 0, bytearray(), []
                self.next_seq = self.committed_seq + 1
        if self._fd is not None:
            os.close(self._fd)  # every commit fsynced it
            self._fd = None
        self.persist()
        self._write_meta()
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
                "fault": self.fault,
                "unwritten": self._unwritten,
                "dropped_wal_full": self.dropped_wal_full,
                "corrupt_records": self.corrupt_records,
                "corrupt_bytes": self.corrupt_bytes,
                "corrupt_frames": self.corrupt_frames,
                "damage": [s.as_json() for _k, s in sorted(self._damage.items())],
                "cursors": {
                    n: {"acked": a, "lag": max(0, self.committed_seq - a)} for n, a in sorted(self.acks.items())
                },
            }
