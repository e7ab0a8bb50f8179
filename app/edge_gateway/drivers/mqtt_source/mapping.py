"""Topic → tags: exact topics first, then patterns from the most specific down.

Several variables may name the same topic (one JSON payload carrying several values, each
picked by its own pointer): the winning topic key yields all of them, in config order. The
winner is the exact topic if one is configured, else the first pattern in `specificity`
order that matches (config order breaks ties), so the result never depends on dict order.
Resolved routes are cached per topic (bounded), because a plant publishes the same few
hundred topics again and again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edge_gateway.drivers.mqtt_source import topics
from edge_gateway.drivers.mqtt_source.model import MqttTag
from edge_gateway.drivers.mqtt_source.payload import Decoder

TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
TAG_MAX = 200
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
CACHE_MAX = 10_000


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    """`lab.{1}.temp`: literal parts and 1-based capture indexes, alternating."""

    parts: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str, captures: int) -> Template:
        """Raise TemplateError when a placeholder is not {n} with 1 <= n <= captures."""
        parts: list[str | int] = []
        pos = 0
        for m in PLACEHOLDER.finditer(text):
            parts.append(text[pos : m.start()])
            name = m.group(1)
            if not name.isdigit() or int(name) == 0:
                raise TemplateError(f"placeholder {{{name}}} must be {{1}}, {{2}}, … (a captured topic level)")
            n = int(name)
            if n > captures:
                plural = "s" if captures != 1 else ""
                have = f"has {captures} wildcard level{plural}" if captures else "has no wildcards"
                raise TemplateError(f"placeholder {{{n}}} but the topic {have}")
            parts.append(n)
            pos = m.end()
        parts.append(text[pos:])
        if any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
            raise TemplateError("unbalanced '{' or '}' in the tag")
        sample = "".join(p if isinstance(p, str) else "x" for p in parts)
        if not TAG_RE.match(sample):
            raise TemplateError("a tag is letters, digits and _ . : - (placeholders aside)")
        return cls(tuple(p for p in parts if p != ""))

    @property
    def fixed(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, caps: tuple[str, ...]) -> str | None:
        """The tag for these captured levels; None when a capture makes it an invalid tag
        (empty level, a space, …). `#` captures keep their levels, joined with '.'."""
        out = []
        for p in self.parts:
            if isinstance(p, int):
                cap = caps[p - 1].replace("/", ".")
                if not cap:
                    return None
                out.append(cap)
            else:
                out.append(p)
        tag = "".join(out)
        return tag if len(tag) <= TAG_MAX and TAG_RE.match(tag) else None


def may_produce(template: str, tag: str) -> bool:
    """Whether a (valid) tag template can render as `tag`: each {n} stands for one or more characters."""
    literal = PLACEHOLDER.split(template)[::2]  # split keeps the captured names at odd positions
    return re.fullmatch(".+".join(map(re.escape, literal)), tag) is not None


@dataclass(frozen=True)
class Target:
    """One variable that a topic maps to, prepared for the hot path."""

    spec: MqttTag
    template: Template
    decoder: Decoder


Route = tuple[tuple[str | None, Target], ...]  # (rendered tag or None when invalid, target)


class TopicMap:
    def __init__(self, tags: Iterable[MqttTag]) -> None:
        groups: dict[str, list[Target]] = {}
        for t in tags:
            filt = topics.check_filter(t.topic)
            target = Target(t, Template.parse(t.tag, topics.wildcards(filt)), Decoder(t.payload, t.datatype, t.scale))
            groups.setdefault(t.topic, []).append(target)
        self._exact: dict[str, tuple[Target, ...]] = {}
        patterns: list[tuple[tuple[int, ...], int, topics.Levels, tuple[Target, ...]]] = []
        for i, (topic, targets) in enumerate(groups.items()):
            filt = topics.levels(topic)
            if topics.is_pattern(filt):
                patterns.append((topics.specificity(filt), i, filt, tuple(targets)))
            else:
                self._exact[topic] = tuple(targets)
        patterns.sort(key=lambda p: (p[0], p[1]))
        self._patterns = [(filt, targets) for _, _, filt, targets in patterns]
        self._cache: dict[str, Route] = {}

    @property
    def empty(self) -> bool:
        return not self._exact and not self._patterns

    def route(self, topic: str) -> Route:
        r = self._cache.get(topic)
        if r is None:
            r = self._resolve(topic)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[topic] = r
        return r

    def _resolve(self, topic: str) -> Route:
        exact = self._exact.get(topic)
        if exact is not None:
            return tuple((t.template.render(()), t) for t in exact)
        lv = topics.levels(topic)
        for filt, targets in self._patterns:
            caps = topics.match(filt, lv)
            if caps is not None:
                return tuple((t.template.render(caps), t) for t in targets)
        return ()
