"""YAML with line numbers: every problem in a config must point at `file:line`.

PyYAML's composed node tree keeps marks; we build the data from it and keep the tree to
map a JSON path (as jsonschema reports it) back to the line of the offending node.
PyYAML also takes the last of duplicate keys silently, so duplicates are found here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PathElem = str | int

# YAML 1.1 scalars that PyYAML turns into something else than the text the user wrote.
_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {tag}{self.message}"


@dataclass
class Source:
    """One parsed YAML file: its data, its node tree, and where to report against it."""

    name: str  # the path as the user gave it, used in messages
    data: Any = None
    root: yaml.Node | None = None
    problems: list[Problem] = field(default_factory=list)
    raw: bytes = b""

    def error(self, path: Sequence[PathElem], message: str, key: bool = False) -> None:
        self.problems.append(Problem(self.name, self.line(path, key), message))

    def warn(self, path: Sequence[PathElem], message: str, key: bool = False) -> None:
        self.problems.append(Problem(self.name, self.line(path, key), message, "warning"))

    def node(self, path: Sequence[PathElem], key: bool = False) -> yaml.Node | None:
        """The node at `path` (or its key node when `key`); the deepest existing ancestor otherwise."""
        node, via = self.root, None
        if node is None:
            return None
        for i, elem in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == str(elem):
                        node, via = (k if (key and last) else v), k
                        break
                else:
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(elem, int) and elem < len(node.value):
                node, via = node.value[elem], None
            else:
                break
        # A block mapping's own mark is its first key: point at the key that names it instead.
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and via is not None:
            return via
        return node

    def line(self, path: Sequence[PathElem], key: bool = False) -> int:
        node = self.node(path, key)
        return node.start_mark.line + 1 if node is not None else 1

    def column(self, path: Sequence[PathElem]) -> int:
        node = self.node(path)
        return node.start_mark.column + 1 if node is not None else 1

    def scalar_text(self, path: Sequence[PathElem]) -> str | None:
        node = self.node(path)
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def yaml_trap(self, path: Sequence[PathElem]) -> str:
        """A hint when YAML 1.1 changed what the user wrote (`on` → True, `0755` → 493)."""
        text = self.scalar_text(path)
        node = self.node(path)
        if text is None or not isinstance(node, yaml.ScalarNode) or node.style:
            return ""
        if text.lower() in _BOOL_WORDS:
            return f" (YAML reads unquoted {text} as a boolean: quote it)"
        if text.startswith("0") and text[1:].isdigit() and len(text) > 1:
            return f" (YAML reads {text} as an octal number: quote it)"
        if ":" in text and text.replace(":", "").isdigit():
            return f" (YAML reads {text} as a base-60 number: quote it)"
        return ""


def read(path: Path, name: str) -> Source:
    src = Source(name)
    try:
        src.raw = path.read_bytes()
    except OSError as e:
        src.problems.append(Problem(name, 1, f"cannot read: {e.strerror}"))
        return src
    try:
        loader = yaml.SafeLoader(src.raw.decode("utf-8"))
        try:
            root = loader.get_single_node()
            src.root = root
            if root is not None:
                _find_duplicate_keys(src, root)
                src.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        src.problems.append(Problem(name, 1, f"not UTF-8 text: {e.reason}"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(x for x in (e.context, e.problem) if x)
        src.problems.append(Problem(name, line, f"YAML syntax error: {what}"))
        src.root = None
    except yaml.YAMLError as e:
        src.problems.append(Problem(name, 1, f"YAML error: {e}"))
    return src


def _find_duplicate_keys(src: Source, node: yaml.Node) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    src.problems.append(
                        Problem(
                            src.name,
                            k.start_mark.line + 1,
                            f"duplicate key {k.value!r} (first at line {seen[k.value]}); YAML keeps only the last",
                        )
                    )
                else:
                    seen[k.value] = k.start_mark.line + 1
            _find_duplicate_keys(src, v)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _find_duplicate_keys(src, item)
