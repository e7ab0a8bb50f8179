"""On-disk record: one CRC-checked batch of frames with consecutive seqs (Kafka-style).

    header (24 bytes, little endian)
      magic     u16  0xE6A7
      version   u8   1
      flags     u8   0
      length    u32  bytes of payload
      crc32     u32  zlib.crc32 over first_seq, count and payload
      first_seq u64
      count     u32
    payload: `count` frames, each
      ts u64 (ms) | kind u8 | vtype u8 | tag_len u16 | q_len u8 | meta_len u32 | tag | q | value | meta (JSON)
      value: nothing (None, bools), 8 bytes (i64, f64), or u32 length + bytes (str, bytes, big int)

One CRC per batch keeps the per-frame cost to one struct.pack; the bus hands the writer
frames with consecutive seqs, so only the first is stored. The magic is what a reader
resynchronises on: after a header or CRC that does not check, `scan` looks for the next
offset where the magic starts a whole record whose CRC checks. What lies between is
corruption; a bad stretch with no valid record after it is a torn tail in the segment a
crash interrupted (truncated on open) and corruption anywhere else (wal.py has the rules).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from edge_gateway.core.frame import GOOD, Frame, Kind, Value

MAGIC = 0xE6A7
VERSION = 1
HEADER = struct.Struct("<HBBIIQI")
HEADER_SIZE = HEADER.size  # 24
_CRC_FROM = 12  # crc covers first_seq, count (header[12:]) and the payload
_FRAME = struct.Struct("<QBBHBI")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_MAGIC_BYTES = struct.pack("<H", MAGIC)
MAX_PAYLOAD = 1 << 30

_KINDS = tuple(Kind)  # indexing beats Kind(n), which is a slow enum lookup in the hot loop

# value types
_NONE, _FALSE, _TRUE, _INT, _FLOAT, _STR, _BYTES, _BIGINT = range(8)


def encode(frames: list[Frame]) -> bytes:
    """One record for frames with consecutive seqs starting at frames[0].seq."""
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
    return HEADER.pack(MAGIC, VERSION, 0, len(payload), crc, frames[0].seq, len(frames)) + payload


def declared_size(buf: bytes | memoryview) -> int | None:
    """Header plus payload length of the record `buf` starts with, if it starts with a record header."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, version, _flags, length, *_ = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD:
        return None
    return HEADER_SIZE + int(length)


def decode(first_seq: int, count: int, payload: bytes | memoryview) -> list[Frame]:
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
    if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD or count == 0:
        return None
    end = off + HEADER_SIZE + length
    if end > len(buf):
        return None
    body = buf[off + _CRC_FROM : end]
    if zlib.crc32(body) != crc:
        return None
    return Span(off, end, first_seq, count)


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
