"""On-disk record: one CRC-checked batch of frames with consecutive seqs (Kafka-style).

    header (24 bytes, little endian)
      magic     u16  0xE6A7
      version   u8   2 (written); 1 is still read
      flags     u8   0
      length    u32  bytes of payload
      crc32     u32  zlib.crc32 over first_seq, count and payload
      first_seq u64
      count     u32
    payload, version 2: three columns of `count` entries
      marks     count × u8        per frame: MARK_CMD (a cloud command, never sent), MARK_DUP (its meta
                                  says dup=possible)
      ends      count × u32       where frame i's JSON ends in `text` (exclusive)
      text      the frames' JSON objects (bus.framejson, ASCII) joined by ","; frame i is
                text[ends[i-1] + 1 : ends[i]] (from 0 for the first)
    payload, version 1 (read only): `count` frames, each
      ts u64 (ms) | kind u8 | vtype u8 | tag_len u16 | q_len u8 | meta_len u32 | tag | q | value | meta (JSON)
      value: nothing (None, bools), 8 bytes (i64, f64), or u32 length + bytes (str, bytes, big int)

Version 2 stores each frame in the JSON it is sent in, so a frame is encoded once, by the WAL writer:
a batch of consecutive data frames is `[` + one slice of `text` + `]` (delivery.batcher), with no
per-frame work on the uplink and no frame objects rebuilt. A read gives `Block`s (a record's columns)
and `Run`s (a range of one block); `Block.frames` decodes them back into frames when frames are wanted.

One CRC per batch; the bus hands the writer frames with consecutive seqs, so only the first is
stored. The magic is what a reader resynchronises on: after a header or CRC that does not check,
`scan` looks for the next offset where the magic starts a whole record whose CRC checks. What lies
between is corruption; a bad stretch with no valid record after it is a torn tail in the segment a
crash interrupted (truncated on open) and corruption anywhere else (wal.py has the rules). Both
versions share the header, the CRC and these rules.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, groupby, islice
from operator import attrgetter

from edge_gateway.bus import framejson
from edge_gateway.core.frame import GOOD, Frame, FrameBlock, Kind, Value

MAGIC = 0xE6A7
VERSION = 2  # written
VERSIONS = (1, 2)  # read
MARK_CMD = 1
MARK_DUP = 2
assert list(Kind) == [Kind.DATA, Kind.CMD] and Kind.CMD == MARK_CMD  # block_of stores a frame's kind as its mark
_BIG_ENDIAN = sys.byteorder == "big"
HEADER = struct.Struct("<HBBIIQI")
HEADER_SIZE = HEADER.size  # 24
_CRC_FROM = 12  # crc covers first_seq, count (header[12:]) and the payload
_FRAME = struct.Struct("<QBBHBI")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_MAGIC_BYTES = struct.pack("<H", MAGIC)
MAX_PAYLOAD = 1 << 30

_kind = attrgetter("kind")
_PLUS1 = (1).__add__
_KINDS = tuple(Kind)  # indexing beats Kind(n), which is a slow enum lookup in the hot loop

# value types
_NONE, _FALSE, _TRUE, _INT, _FLOAT, _STR, _BYTES, _BIGINT = range(8)


def encode_v1(frames: list[Frame]) -> bytes:
    """A version 1 record (no longer written: kept so tests can make the WALs older gateways wrote)."""
    parts: list[bytes] = []
    append = parts.append
    pack = _FRAME.pack
    for f in frames:
        v = f.value
        if isinstance(v, bool):  # before int: bool is an int subclass
            vb, vt = b"", (_TRUE if v else _FALSE)
        elif isinstance(v, float):
            vb, vt = _F64.pack(v), _FLOAT
        elif isinstance(v, int):
            if -(1 << 63) <= v < (1 << 63):
                vb, vt = _I64.pack(v), _INT
            else:
                vb, vt = str(v).encode(), _BIGINT
        elif isinstance(v, str):
            vb, vt = v.encode(), _STR
        elif v is None:
            vb, vt = b"", _NONE
        elif isinstance(v, bytes | bytearray):
            vb, vt = bytes(v), _BYTES
        else:
            raise TypeError(f"frame {f.tag}: value of type {type(v).__name__} cannot be stored")
        tag = f.tag.encode()
        q = b"" if f.q == GOOD else f.q.encode()
        meta = b"" if not f.meta else json.dumps(f.meta, separators=(",", ":")).encode()
        append(pack(f.ts, f.kind, vt, len(tag), len(q), len(meta)))
        append(tag)
        if q:
            append(q)
        if vt >= _STR:
            append(_U32.pack(len(vb)))
        if vb:
            append(vb)
        if meta:
            append(meta)
    payload = b"".join(parts)
    tail = struct.pack("<QI", frames[0].seq, len(frames))
    crc = zlib.crc32(payload, zlib.crc32(tail))
    return HEADER.pack(MAGIC, 1, 0, len(payload), crc, frames[0].seq, len(frames)) + payload


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """The frames of one record in their stored form (the version 2 columns)."""

    first_seq: int
    marks: bytes
    ends: array  # type: ignore[type-arg]  # array("I")
    text: bytes
    cmds: tuple[int, ...] = field(default=())  # indices of MARK_CMD frames (commands are rare)
    dups: tuple[int, ...] = field(default=())  # indices of MARK_DUP frames

    @classmethod
    def of(cls, first_seq: int, marks: bytes, ends: array, text: bytes) -> Block:  # type: ignore[type-arg]
        if marks.count(0) == len(marks):
            return cls(first_seq, marks, ends, text)
        cmds = tuple(i for i, m in enumerate(marks) if m & MARK_CMD)
        dups = tuple(i for i, m in enumerate(marks) if m & MARK_DUP)
        return cls(first_seq, marks, ends, text, cmds, dups)

    @property
    def count(self) -> int:
        return len(self.marks)

    def start(self, i: int) -> int:
        """Where frame i's JSON starts in `text`."""
        return self.ends[i - 1] + 1 if i else 0

    def json(self, lo: int, hi: int) -> bytes:
        """The JSON of frames lo..hi-1 joined by "," (commands among them included)."""
        return self.text[self.start(lo) : self.ends[hi - 1]]

    def frames(self, lo: int = 0, hi: int | None = None) -> list[Frame]:
        hi = self.count if hi is None else hi
        if lo >= hi:
            return []
        objs = json.loads(b"[" + self.json(lo, hi) + b"]")
        marks = self.marks
        return [framejson.frame_of(d, _KINDS[marks[lo + k] & MARK_CMD]) for k, d in enumerate(objs)]


@dataclass(frozen=True, slots=True)
class Run:
    """Frames lo..hi-1 of a block: what a read returns, without copying or decoding anything."""

    block: Block
    lo: int
    hi: int

    @property
    def first_seq(self) -> int:
        return self.block.first_seq + self.lo

    @property
    def last_seq(self) -> int:
        return self.block.first_seq + self.hi - 1

    @property
    def count(self) -> int:
        return self.hi - self.lo

    def frames(self) -> list[Frame]:
        return self.block.frames(self.lo, self.hi)

    def tail(self, seq: int, n: int) -> Run:
        """Up to n frames from seq on (seq within this run)."""
        lo = seq - self.block.first_seq
        return Run(self.block, lo, min(self.hi, lo + n))


def block_of(items: Sequence[Frame | FrameBlock]) -> Block:
    """Frames and blocks with consecutive seqs in their stored form: each frame's JSON (bus.framejson), once."""
    first, last = items[0], items[-1]
    last_seq = last.seq + len(last) - 1 if type(last) is FrameBlock else last.seq
    chunks: list[str] = []  # the text, in pieces joined by ","
    lens: list[int] = []  # per frame, its JSON's length + 1 (the comma after it)
    marks = bytearray()
    for cls, group in groupby(items, type):
        if cls is FrameBlock:
            for b in group:
                if not len(b):  # type: ignore[arg-type]
                    continue
                fast = framejson.block_text(b)  # type: ignore[arg-type]
                if fast is not None:
                    chunks.append(fast[0])
                    lens += fast[1]
                else:
                    texts = framejson.block_json(b)  # type: ignore[arg-type]
                    chunks.append(",".join(texts))
                    lens += map(_PLUS1, map(len, texts))
            marks += bytes(len(lens) - len(marks))  # data frames without meta
            continue
        frames: list[Frame] = list(group)  # type: ignore[arg-type]
        texts = framejson.frames_json(frames)
        chunks.append(",".join(texts))
        lens += map(_PLUS1, map(len, texts))
        at = len(marks)
        marks += bytes(map(_kind, frames))  # Kind.CMD == MARK_CMD
        for i, f in enumerate(frames, at):
            if f.meta and framejson.dup_marked(f):
                marks[i] |= MARK_DUP
    if last_seq - first.seq != len(lens) - 1:
        raise ValueError(f"seqs {first.seq}..{last_seq} are not consecutive for {len(lens)} frames")
    ends = array("I", islice(accumulate(lens, initial=-1), 1, None))  # frame i ends before its comma
    return Block.of(first.seq, bytes(marks), ends, ",".join(chunks).encode("ascii"))


def pack(block: Block) -> bytes:
    """The version 2 record of a block."""
    ends = block.ends
    if _BIG_ENDIAN:
        ends = array("I", ends)
        ends.byteswap()
    marks, ends_b, text = block.marks, ends.tobytes(), block.text
    tail = struct.pack("<QI", block.first_seq, block.count)
    crc = zlib.crc32(text, zlib.crc32(ends_b, zlib.crc32(marks, zlib.crc32(tail))))  # = crc of tail + payload
    length = len(marks) + len(ends_b) + len(text)
    header = HEADER.pack(MAGIC, VERSION, 0, length, crc, block.first_seq, block.count)
    return b"".join((header, marks, ends_b, text))  # one copy of the payload


def encode(items: Sequence[Frame | FrameBlock]) -> tuple[bytes, Block]:
    """One record for frames and blocks with consecutive seqs starting at items[0].seq, and its block."""
    block = block_of(items)
    return pack(block), block


def decode_block(version: int, first_seq: int, count: int, payload: bytes | memoryview) -> Block:
    """The block of a valid record's payload; a version 1 record is decoded into frames and encoded."""
    if version == 1:
        return block_of(decode(first_seq, count, payload))
    mv = memoryview(payload)
    ends = array("I")
    ends.frombytes(mv[count : 5 * count])
    if _BIG_ENDIAN:
        ends.byteswap()
    text = bytes(mv[5 * count :])
    if count and ends[-1] != len(text):
        raise ValueError(f"record at seq {first_seq}: its text is {len(text)} bytes, its last frame ends at {ends[-1]}")
    return Block.of(first_seq, bytes(mv[:count]), ends, text)


def declared_size(buf: bytes | memoryview) -> int | None:
    """Header plus payload length of the record `buf` starts with, if it starts with a record header."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, version, _flags, length, *_ = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version not in VERSIONS or length > MAX_PAYLOAD:
        return None
    return HEADER_SIZE + int(length)


def decode(first_seq: int, count: int, payload: bytes | memoryview) -> list[Frame]:
    """The frames of a version 1 payload."""
    out: list[Frame] = []
    mv = memoryview(payload)
    pos = 0
    unpack = _FRAME.unpack_from
    size = _FRAME.size
    kinds = _KINDS
    for i in range(count):
        ts, kind, vt, tag_len, q_len, meta_len = unpack(mv, pos)
        pos += size
        tag = str(mv[pos : pos + tag_len], "utf-8")
        pos += tag_len
        q = str(mv[pos : pos + q_len], "utf-8") if q_len else GOOD
        pos += q_len
        value: Value
        if vt == _FLOAT:
            value = _F64.unpack_from(mv, pos)[0]
            pos += 8
        elif vt == _INT:
            value = _I64.unpack_from(mv, pos)[0]
            pos += 8
        elif vt in (_STR, _BYTES, _BIGINT):
            n = _U32.unpack_from(mv, pos)[0]
            pos += 4
            raw = bytes(mv[pos : pos + n])
            pos += n
            value = raw if vt == _BYTES else (int(raw) if vt == _BIGINT else raw.decode())
        elif vt == _TRUE:
            value = True
        elif vt == _FALSE:
            value = False
        elif vt == _NONE:
            value = None
        else:
            raise ValueError(f"unknown value type {vt}")
        meta = None
        if meta_len:
            meta = json.loads(bytes(mv[pos : pos + meta_len]))
            pos += meta_len
        out.append(Frame(first_seq + i, ts, tag, value, q, kinds[kind], meta))
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """Where a valid record sits in a segment."""

    offset: int
    end: int
    first_seq: int
    count: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that are not a valid record: a torn tail (`torn`) or corruption in the middle."""

    offset: int
    end: int
    torn: bool


def _valid_at(buf: memoryview, off: int) -> Span | None:
    if off + HEADER_SIZE > len(buf):
        return None
    magic, version, _flags, length, crc, first_seq, count = HEADER.unpack_from(buf, off)
    if magic != MAGIC or version not in VERSIONS or length > MAX_PAYLOAD or count == 0:
        return None
    end = off + HEADER_SIZE + length
    if end > len(buf):
        return None
    body = buf[off + _CRC_FROM : end]
    if zlib.crc32(body) != crc:
        return None
    return Span(off, end, first_seq, count, version)


def scan(buf: bytes | memoryview, start: int = 0) -> Iterator[Span | Damage]:
    """Valid records and damaged stretches of a segment's bytes, in order.

    After a bad header or CRC, look for the next offset where a whole valid record starts:
    if there is one, the bytes between are corruption (the rest of the segment is still
    good); if there is none, they are a torn tail."""
    raw = bytes(buf)
    mv = memoryview(raw)
    off = start
    n = len(mv)
    while off < n:
        span = _valid_at(mv, off)
        if span is not None:
            yield span
            off = span.end
            continue
        nxt = off + 1
        while True:
            nxt = raw.find(_MAGIC_BYTES, nxt) if nxt < n else -1
            if nxt < 0:
                yield Damage(off, n, torn=True)
                return
            if _valid_at(mv, nxt) is not None:
                yield Damage(off, nxt, torn=False)
                off = nxt
                break
            nxt += 1
