"""MQTT topic filters: validation, matching with captured levels, and how filters relate.

One module for both the loader (lint: is this filter valid, does a subscription deliver this
tag's topic at all) and the running source (which tag does a topic map to), so the two can
never disagree about what `+` and `#` mean. Rules from MQTT 5.0 §4.7: `+` fills one whole level,
`#` the rest and must be last; a filter starting with a wildcard never matches a `$…` topic.
"""

from __future__ import annotations

Levels = tuple[str, ...]

MAX_TOPIC_BYTES = 65535


class FilterError(ValueError):
    pass


def levels(text: str) -> Levels:
    return tuple(text.split("/"))


def check_filter(text: str) -> Levels:
    """The filter's levels, or FilterError saying what is wrong with it."""
    if not text:
        raise FilterError("an empty topic filter matches nothing")
    if "\0" in text:
        raise FilterError("a topic filter must not contain NUL")
    if len(text.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise FilterError(f"a topic filter is at most {MAX_TOPIC_BYTES} bytes")
    if text.startswith("$share/"):
        raise FilterError("shared subscriptions ($share/…) are not supported by the MQTT source")
    parts = levels(text)
    for i, part in enumerate(parts):
        if "#" in part and (part != "#" or i != len(parts) - 1):
            raise FilterError(f"'#' must be a whole level and the last one (level {i + 1}: {part!r})")
        if "+" in part and part != "+":
            raise FilterError(f"'+' must be a whole level (level {i + 1}: {part!r})")
    return parts


def check_topic(text: str) -> Levels:
    """A topic name as published (no wildcards)."""
    parts = check_filter(text)
    if any(p in ("+", "#") for p in parts):
        raise FilterError("a topic name has no wildcards")
    return parts


def is_pattern(filt: Levels) -> bool:
    return any(p in ("+", "#") for p in filt)


def wildcards(filt: Levels) -> int:
    """How many levels a match captures ({1}, {2}, …): one per `+`, one for `#`."""
    return sum(1 for p in filt if p in ("+", "#"))


def match(filt: Levels, topic: Levels) -> tuple[str, ...] | None:
    """The captured levels when `topic` matches `filt`, else None. `#` captures the rest of
    the topic as one string ("" when `a/#` matches `a`)."""
    if filt and filt[0] in ("+", "#") and topic[0].startswith("$"):
        return None
    caps: list[str] = []
    for i, f in enumerate(filt):
        if f == "#":
            caps.append("/".join(topic[i:]))
            return tuple(caps)
        if i >= len(topic):
            return None
        t = topic[i]
        if f == "+":
            caps.append(t)
        elif f != t:
            return None
    return tuple(caps) if len(filt) == len(topic) else None


def specificity(filt: Levels) -> tuple[int, ...]:
    """Sort key, most specific first: level by level a literal beats `+`, which beats `#`;
    with an equal prefix the shorter filter comes first (`a/+` before `a/+/#`)."""
    return tuple(2 if p == "#" else 1 if p == "+" else 0 for p in filt)


def _dollar_clash(a: Levels, b: Levels) -> bool:
    """A wildcard first level never reaches a `$…` first level."""
    return (a[0] in ("+", "#") and b[0].startswith("$")) or (b[0] in ("+", "#") and a[0].startswith("$"))


def covers(filt: Levels, pattern: Levels) -> bool:
    """Every topic that `pattern` matches is also matched by `filt`."""
    if _dollar_clash(filt, pattern):
        return False
    for i, f in enumerate(filt):
        if f == "#":
            return True
        if i >= len(pattern):
            return False
        p = pattern[i]
        if p == "#":
            return False
        if f == "+":
            continue
        if f != p:
            return False
    return len(filt) == len(pattern)


def overlaps(a: Levels, b: Levels) -> bool:
    """Some topic is matched by both filters."""
    if _dollar_clash(a, b):
        return False
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x == "+" or y == "+" or x == y:
            continue
        return False
    return True
