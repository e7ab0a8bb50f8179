"""Payload → value: number text, a JSON pointer into JSON, raw bytes, or text.

The checks are the ones a Modbus value goes through: the value must fit the tag's datatype
(range of the integer types, finite float32/float64, bool, string, binary), then the scale
expression runs. Anything that does not fit raises `Malformed` with a short reason; the source
turns it into a bad-quality frame and a counted malformed payload — never an exception that
reaches paho's thread.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from edge_gateway.core.datatypes import FLOAT32_MAX, INT_RANGES, NUMERIC
from edge_gateway.core.frame import Value
from edge_gateway.drivers.mqtt_source.model import Payload

# struct codes of a numeric `bytes` payload (width = the datatype's register size × 2)
STRUCT_CODES = {
    "bool": "?",
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "uint64": "Q",
    "int64": "q",
    "float32": "f",
    "float64": "d",
}
# Which datatypes each payload format can produce (the loader reports the rest).
FORMAT_DATATYPES: dict[str, frozenset[str]] = {
    "number": NUMERIC | {"bool"},
    "json": NUMERIC | {"bool", "string"},
    "string": frozenset({"string"}),
    "bytes": NUMERIC | {"bool", "string", "binary"},
}
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "1", "on"})
_FALSE = frozenset({"false", "0", "off"})


class Malformed(ValueError):
    """A payload that does not become a value. `reason` is a metric label: json, pointer,
    number, encoding, size, type, range, scale."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PointerError(ValueError):
    pass


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: "" is the whole document, else "/"-separated tokens with ~1 = "/" and ~0 = "~"."""
    if text == "":
        return ()
    if text.startswith("#"):
        raise PointerError(f"{text!r} is the URI-fragment form; write the JSON pointer without '#' ({text[1:]!r})")
    if not text.startswith("/"):
        raise PointerError(f"a JSON pointer starts with '/' (e.g. '/{text}'), got {text!r}")
    tokens = text[1:].split("/")
    for tok in tokens:
        for m in re.finditer("~", tok):
            nxt = tok[m.end() : m.end() + 1]
            if nxt not in ("0", "1"):
                raise PointerError(f"'~' must be followed by 0 or 1 in a JSON pointer (token {tok!r})")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def resolve(doc: Any, tokens: tuple[str, ...]) -> Any:
    for tok in tokens:
        if isinstance(doc, dict):
            if tok not in doc:
                raise Malformed("pointer", f"no member {tok!r}")
            doc = doc[tok]
        elif isinstance(doc, list):
            if not (tok == "0" or (tok.isdigit() and not tok.startswith("0"))) or int(tok) >= len(doc):
                raise Malformed("pointer", f"no array element {tok!r} (length {len(doc)})")
            doc = doc[int(tok)]
        else:
            raise Malformed("pointer", f"cannot step into {type(doc).__name__} with {tok!r}")
    return doc


def _no_constant(name: str) -> Any:
    raise Malformed("json", f"{name} is not JSON")


def fit(value: Any, datatype: str) -> Value:
    """The value as the datatype's Python type, or Malformed(type|range)."""
    if datatype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise Malformed("type", f"{value!r} is not a bool")
    if datatype == "string":
        if isinstance(value, str):
            return value
        raise Malformed("type", f"{type(value).__name__} {value!r} is not a string")
    if datatype == "binary":
        if isinstance(value, bytes):
            return value
        raise Malformed("type", f"{type(value).__name__} is not bytes")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed("type", f"{type(value).__name__} {value!r} is not a number")
    if datatype in INT_RANGES:
        if isinstance(value, float):
            if not value.is_integer():
                raise Malformed("type", f"{value!r} is not an integer ({datatype})")
            value = int(value)
        lo, hi = INT_RANGES[datatype]
        if not lo <= value <= hi:
            raise Malformed("range", f"{value} out of range for {datatype} ({lo}..{hi})")
        return value
    f = float(value)
    if not math.isfinite(f) or (datatype == "float32" and abs(f) > FLOAT32_MAX):
        raise Malformed("range", f"{value!r} out of range for {datatype}")
    return f


def _number_text(raw: bytes, datatype: str) -> Any:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Malformed("encoding", "payload is not UTF-8 text") from None
    if datatype == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise Malformed("number", f"{text[:40]!r} is not a bool (true/false/1/0/on/off)")
    if _INTEGER.match(text):
        return int(text)
    if _NUMBER.match(text):
        return float(text)
    raise Malformed("number", f"{text[:40]!r} is not a number")


def _json(raw: bytes, tokens: tuple[str, ...]) -> Any:
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except Malformed:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Malformed("json", f"not JSON: {e}") from None
    value = resolve(doc, tokens)
    if value is None:
        raise Malformed("type", "the value is null")
    return value


def _bytes(raw: bytes, datatype: str, endian: str) -> Any:
    if datatype == "binary":
        return raw
    if datatype == "string":
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("encoding", "payload is not UTF-8 text") from None
    fmt = (">" if endian == "big" else "<") + STRUCT_CODES[datatype]
    if len(raw) != struct.calcsize(fmt):
        raise Malformed("size", f"{len(raw)} bytes, {datatype} needs {struct.calcsize(fmt)}")
    if datatype == "bool" and raw not in (b"\x00", b"\x01"):
        raise Malformed("range", f"byte {raw[0]:#04x} is not a bool (0x00/0x01)")
    return struct.unpack(fmt, raw)[0]


class Decoder:
    """One tag's payload recipe, prepared once (the pointer is parsed here): `decoder(raw) -> value`."""

    __slots__ = ("payload", "datatype", "scale", "_tokens")

    def __init__(self, payload: Payload, datatype: str, scale: Callable[[Any], Any] | None = None) -> None:
        self.payload = payload
        self.datatype = datatype
        self.scale = scale
        self._tokens = parse_pointer(payload.pointer)

    def __call__(self, raw: bytes) -> Value:
        fmt, dt = self.payload.format, self.datatype
        if fmt == "number":
            value = _number_text(raw, dt)
        elif fmt == "json":
            value = _json(raw, self._tokens)
        elif fmt == "bytes":
            value = _bytes(raw, dt, self.payload.endian)
        else:  # string
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Malformed("encoding", "payload is not UTF-8 text") from None
        value = fit(value, dt)
        if self.scale is not None and dt in NUMERIC:
            try:
                value = self.scale(value)
            except ArithmeticError as e:
                raise Malformed("scale", str(e)) from None
            if isinstance(value, float) and not math.isfinite(value):
                raise Malformed("scale", f"scale gave {value!r}")
        return value
