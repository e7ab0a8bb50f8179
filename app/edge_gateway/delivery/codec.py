"""Frames ↔ MQTT payloads (SPEC §5): a JSON array of frame objects, optionally zstd-compressed.

A frame's JSON object (markers for bytes and non-finite floats included) is bus.framejson's: the WAL
writer encodes each frame once and the batcher joins those bytes (delivery.batcher); what is left
here is the array, the compression, and decoding for subscribers.
"""

from __future__ import annotations

import json
from typing import Any

import zstandard

from edge_gateway.bus.framejson import B64, FLOAT, decode_value, frame_json, json_value

__all__ = ["B64", "FLOAT", "CONTENT_TYPE", "Compressor", "decode_payload", "decode_value", "frame_json",
           "join_batch", "json_value"]  # fmt: skip

CONTENT_TYPE = "application/json"


def join_batch(parts: list[str]) -> bytes:
    return ("[" + ",".join(parts) + "]").encode("ascii")


class Compressor:
    """zstd with one ZstdCompressor per instance: ZstdCompressor is not thread-safe, so each uplink
    thread owns one. The frame header carries the content size, so decoders need no limit. Level 1:
    on realistic 32-frame batches (~2.9 kB) it compresses better than level 3 (6.2× against 6.0×,
    bench_e2e's realistic_frames) in 7.3 µs against 8.4."""

    def __init__(self, enabled: bool, level: int = 1) -> None:
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
