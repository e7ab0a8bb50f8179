"""A frame's JSON object (SPEC §5): the form a frame is stored in (WAL record v2) and sent in.

One frame is `{"seq":…, "ts":…, "tag":…, "value":…, "q":…}` plus, when present, `"dup":"possible"`
(the frame may have been delivered before: QoS downgrade) and `"meta":{…}` (the frame's context, e.g.
the source topic of an MQTT-source tag). JSON has no bytes and no NaN, so:
  * bytes values (and bytes inside meta) are `{"b64": "<standard base64>"}`;
  * non-finite floats are `{"float": "NaN" | "Infinity" | "-Infinity"}`.
Both markers are objects with exactly one key, so no real value can be mistaken for them, and
`frame_of` gives the frame back (meta excepted: its bytes and non-finite floats come back as markers).

It lives in the bus, below delivery, because the WAL writer encodes each frame once, here, and
the uplink sends those bytes as they are (delivery.batcher, delivery.codec).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from itertools import repeat
from operator import add, mod
from typing import Any

from edge_gateway.core.frame import Frame, FrameBlock, Kind, Value

B64 = "b64"  # the marker key of a bytes value
FLOAT = "float"  # the marker key of a non-finite float
DUP = "possible"
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _default(o: object) -> object:
    if isinstance(o, bytes | bytearray | memoryview):
        return {B64: base64.b64encode(bytes(o)).decode("ascii")}
    return str(o)  # meta is free-form context: an odd object is shown, never allowed to stop a batch


_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=_default).encode


def _clean(o: Any) -> Any:
    """Meta with non-finite floats anywhere inside (rare): map them to the float marker."""
    if isinstance(o, float):
        return json_value(o)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def json_value(v: Value) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return {FLOAT: "NaN" if math.isnan(v) else _NONFINITE[v]}
    if isinstance(v, bytes):
        return {B64: base64.b64encode(v).decode("ascii")}
    return v


def decode_value(v: Any) -> Value:
    """Inverse of `json_value`, for consumers that want the original Python value back."""
    if isinstance(v, dict) and set(v) == {B64}:
        return base64.b64decode(v[B64])
    if isinstance(v, dict) and set(v) == {FLOAT}:
        return float(v[FLOAT].replace("Infinity", "inf"))
    return v  # type: ignore[no-any-return]


_tag_json: dict[str, str] = {}
_q_json: dict[str, str] = {}
_TAG_CACHE_MAX = 100_000


def _quoted(cache: dict[str, str], s: str) -> str:
    j = cache.get(s)
    if j is None:
        if len(cache) >= _TAG_CACHE_MAX:
            cache.clear()
        j = cache[s] = _encode(s)
    return j


def dup_marked(f: Frame) -> bool:
    """The frame's own meta says it may have been delivered before (an MQTT-source redelivery)."""
    return bool(f.meta) and f.meta.get("dup") == DUP  # type: ignore[union-attr]


def frame_json(f: Frame, dup_possible: bool = False) -> str:
    """One frame as compact ASCII JSON (len() == its size in bytes)."""
    v = f.value
    tv = type(v)
    if f.meta is None and (tv is int or (tv is float and math.isfinite(v)) or tv is bool):  # type: ignore[arg-type]
        vj = ("true" if v else "false") if tv is bool else repr(v)
        dup = ',"dup":"possible"' if dup_possible else ""
        return (
            f'{{"seq":{f.seq},"ts":{f.ts},"tag":{_quoted(_tag_json, f.tag)},"value":{vj},'
            f'"q":{_quoted(_q_json, f.q)}{dup}}}'
        )
    d: dict[str, Any] = {"seq": f.seq, "ts": f.ts, "tag": f.tag, "value": json_value(f.value), "q": f.q}
    meta = f.meta
    if dup_possible or (meta and meta.get("dup") == DUP):
        d["dup"] = DUP
    if meta:
        d["meta"] = meta
    try:
        return _encode(d)
    except ValueError:  # a NaN/Infinity inside meta
        d["meta"] = _clean(meta)
        return _encode(d)


_tag_fields: dict[str, str] = {}  # tag → `,"tag":"<tag>","value":`
_q_fields: dict[str, str] = {}  # quality → `,"q":"<q>"}`


def _field(cache: dict[str, str], s: str, fmt: str) -> str:
    if len(cache) >= _TAG_CACHE_MAX:
        cache.clear()
    j = cache[s] = fmt % _encode(s)
    return j


def frames_json(frames: list[Frame]) -> list[str]:
    """`frame_json` of each frame, the common frame (an int or finite float, no meta) formatted inline
    from the cached text around its value: this runs once per frame on the WAL writer, the only place
    a frame is encoded (`x - x == 0.0` is false for NaN and ±inf, so those take `frame_json`)."""
    tags, qs = _tag_fields, _q_fields
    out: list[str] = []
    append = out.append
    for f in frames:
        v = f.value
        tv = type(v)
        if f.meta is None and (tv is float and v - v == 0.0 or tv is int):  # type: ignore[operator]
            t = tags.get(f.tag) or _field(tags, f.tag, ',"tag":%s,"value":')
            q = qs.get(f.q) or _field(qs, f.q, ',"q":%s}')
            append(f'{{"seq":{f.seq},"ts":{f.ts}{t}{v!r}{q}')
        else:
            append(frame_json(f))
    return out


_tags_json: dict[tuple[str, ...], tuple[str, ...]] = {}  # a block's tags → each one's JSON
_NUMBERS = {int, float}


def _finite_numbers(values: list[Value]) -> bool:
    """Every value an int or a finite float (not bool, no subclass): what `repr` writes as JSON. A NaN or
    ±inf makes the sum non-finite; so may an overflow, and a huge int raises: both just take the slow path."""
    types = set(map(type, values))
    if not types <= _NUMBERS:
        return False
    try:
        return float not in types or math.isfinite(sum(values))  # type: ignore[arg-type]
    except OverflowError:
        return False


def block_json(b: FrameBlock) -> list[str]:
    """`frame_json` of each frame of a block. A block of ints and finite floats with one quality (a Modbus
    read) is formatted in one C-level pass: one `%` per frame over the seq, the tag's cached JSON and the
    value's repr; any other block goes frame by frame (`frames_json`)."""
    q = b.q
    if type(q) is not str or not _finite_numbers(b.values):
        return frames_json(b.frames())
    tags = _tags_json.get(b.tags)
    if tags is None:
        if len(_tags_json) >= _TAG_CACHE_MAX // 100:
            _tags_json.clear()
        tags = _tags_json[b.tags] = tuple(map(_encode, b.tags))
    qj = _quoted(_q_json, q).replace("%", "%%")
    fmt = f'{{"seq":%d,"ts":{b.ts},"tag":%s,"value":%r,"q":{qj}}}'
    return list(map(mod, repeat(fmt), zip(range(b.seq, b.seq + len(tags)), tags, b.values, strict=True)))


_LOW3 = tuple(f"{i:03d}" for i in range(1000))  # a seq's last three digits


@dataclass(slots=True)
class _Layout:
    """What is constant for a block's tags: the join's pieces with each tag's `,"tag":…,"value":` in
    place, and per frame the length of everything but the value, by the block's constant length."""

    pieces: list[str]
    tag_lens: tuple[int, ...]
    lens_by_const: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def lens(self, const: int) -> tuple[int, ...]:
        got = self.lens_by_const.get(const)
        if got is None:
            got = self.lens_by_const[const] = tuple(n + const for n in self.tag_lens)
        return got


_layouts: dict[tuple[str, ...], _Layout] = {}


def _layout(tags: tuple[str, ...]) -> _Layout:
    lay = _layouts.get(tags)
    if lay is None:
        if len(_layouts) >= _TAG_CACHE_MAX // 100:
            _layouts.clear()
        parts = [f',"tag":{_encode(t)},"value":' for t in tags]
        pieces = [""] * (5 * len(tags) + 1)
        pieces[3::5] = parts
        lay = _layouts[tags] = _Layout(pieces, tuple(map(len, parts)))
    return lay


def block_text(b: FrameBlock) -> tuple[str, list[int]] | None:
    """A plain read's frames (ints and finite floats, one quality, seq >= 1000, at most 1000 frames) as
    the text `",".join(block_json(b))` and each frame's length + 1 (its comma), or None for any other
    block. No per-frame string is built: one "".join over 5 pieces per frame,

        '{"seq":' + HI | LO_0 | ',"ts":T' | ',"tag":J_0,"value":' | V_0 | ',"q":Q},{"seq":' + HI | LO_1 | …

    HI is seq // 1000 (in the piece before LO; +1 once the block passes a multiple of 1000), LO the last
    three digits (a slice of `_LOW3`), the tag pieces come from the tags' cached layout, V is repr; the
    last frame ends `,"q":Q}`. A frame's length is then its tag piece's and its value's plus a constant,
    unless HI gains a digit inside the block (999 → 1000 thousand): that block takes `block_json`."""
    q, values, seq = b.q, b.values, b.seq
    n = len(values)
    if type(q) is not str or seq < 1000 or not 0 < n <= 1000 or not _finite_numbers(values):
        return None
    hi, lo = divmod(seq, 1000)
    head, head2 = str(hi), str(hi + 1)
    k = min(n, 1000 - lo)  # frames before the next multiple of 1000
    if k < n and len(head2) != len(head):
        return None
    lay = _layout(b.tags)
    qj = _quoted(_q_json, q)
    ts = ',"ts":' + str(b.ts)
    sep = ',"q":' + qj + '},{"seq":'
    vals = list(map(repr, values))
    p = lay.pieces.copy()
    p[0] = '{"seq":' + head
    p[1::5] = _LOW3[lo : lo + n] if k == n else _LOW3[lo:] + _LOW3[: n - k]
    p[2::5] = [ts] * n
    p[4::5] = vals
    p[5::5] = [sep + head] * (k - 1) + [sep + head2] * (n - k) + [',"q":' + qj + "}"]
    const = len('{"seq":') + len(head) + 3 + len(ts) + len(',"q":') + len(qj) + len("}") + len(",")
    return "".join(p), list(map(add, map(len, vals), lay.lens(const)))


def frame_of(d: dict[str, Any], kind: Kind = Kind.DATA) -> Frame:
    """The frame a decoded JSON object stands for (kind is not on the wire: the WAL keeps it apart)."""
    return Frame(d["seq"], d["ts"], d["tag"], decode_value(d["value"]), d["q"], kind, d.get("meta"))
