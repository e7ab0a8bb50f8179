"""Frames ↔ MQTT payloads (SPEC §5): a JSON array of frame objects, optionally zstd-compressed.

One frame is `{"seq":…, "ts":…, "tag":…, "value":…, "q":…}` plus, when present, `"dup":"possible"`
(the frame may have been delivered before: QoS downgrade) and `"meta":{…}` (the frame's context, e.g.
the source topic of an MQTT-source tag). JSON has no bytes and no NaN, so:
  * bytes values (and bytes inside meta) are `{"b64": "<standard base64>"}`;
  * non-finite floats are `{"float": "NaN" | "Infinity" | "-Infinity"}`.
Both markers are objects with exactly one key, so no real value can be mistaken for them.
Frames are encoded one by one so a batch can be closed on its byte size before it is joined.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import zstandard

from edge_gateway.core.frame import Frame, Value

B64 = "b64"  # the marker key of a bytes value
FLOAT = "float"  # the marker key of a non-finite float
CONTENT_TYPE = "application/json"
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


def frame_json(f: Frame, dup_possible: bool = False) -> str:
    """One frame as compact ASCII JSON (len() == its size in bytes).

    The common frame (a finite number, no meta) is formatted directly: it is the hot path of the
    uplink and this is about twice as fast as going through the JSON encoder."""
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
    if dup_possible or (meta and meta.get("dup") == "possible"):
        d["dup"] = "possible"
    if meta:
        d["meta"] = meta
    try:
        return _encode(d)
    except ValueError:  # a NaN/Infinity inside meta
        d["meta"] = _clean(meta)
        return _encode(d)


def join_batch(parts: list[str]) -> bytes:
    return ("[" + ",".join(parts) + "]").encode("ascii")


class Compressor:
    """zstd level 3 with one ZstdCompressor per instance: ZstdCompressor is not thread-safe, so each
    uplink thread owns one. The frame header carries the content size, so decoders need no limit."""

    def __init__(self, enabled: bool, level: int = 3) -> None:
        self.encoding = "zstd" if enabled else "identity"
        self._z = zstandard.ZstdCompressor(level=level, write_content_size=True) if enabled else None

    def __call__(self, raw: bytes) -> bytes:
        return self._z.compress(raw) if self._z is not None else raw


# -- decoding: for subscribers (tests, the demo, benchmarks, cloud-side code) -------------------------


def decode_payload(payload: bytes, encoding: str | None, max_output_size: int = 256 << 20) -> Any:
    """Payload → JSON (a list of frame dicts for a batch, one dict for `batch: 1`)."""
    if encoding == "zstd":
        payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max_output_size)
    elif encoding not in (None, "identity"):
        raise ValueError(f"unknown encoding {encoding!r}")
    return json.loads(payload)


def decode_value(v: Any) -> Value:
    """Inverse of `json_value`, for consumers that want the original Python value back."""
    if isinstance(v, dict) and set(v) == {B64}:
        return base64.b64decode(v[B64])
    if isinstance(v, dict) and set(v) == {FLOAT}:
        return float(v[FLOAT].replace("Infinity", "inf"))
    return v
