"""YAML with line numbers: every problem in a config must point at `file:line`.

PyYAML's composed node tree keeps marks; we build the data from it and keep the tree to
map a JSON path (as jsonschema reports it) back to the line of the offending node.
PyYAML also takes the last of duplicate keys silently, so duplicates are found here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PathElem = str | int

# libyaml's parser when PyYAML has it (Buildroot's always does): its nodes carry the same marks, and
# it is several times faster and leaves a much smaller heap behind on a 10 000-tag config.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.1 scalars that PyYAML turns into something else than the text the user wrote.
_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


@dataclass(frozen=True)
class Problem:
    """One finding, printed `file:line: message` (the form editors and CI annotate)."""

    file: str  # the path as the user gave it, e.g. config/variables.yml
    line: int  # 1-based
    column: int = 1  # 1-based; kept for tools, not printed
    severity: Literal["error", "warning"] = "error"
    message: str = ""

    def __str__(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {tag}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


@dataclass
class Source:
    """One parsed YAML file: its data, its node tree, and where to report against it."""

    name: str  # the path as the user gave it, used in messages
    data: Any = None
    root: yaml.Node | None = None
    problems: list[Problem] = field(default_factory=list)
    raw: bytes = b""

    def error(self, path: Sequence[PathElem], message: str, key: bool = False, column: int | None = None) -> None:
        self._add(path, "error", message, key, column)

    def warn(self, path: Sequence[PathElem], message: str, key: bool = False, column: int | None = None) -> None:
        self._add(path, "warning", message, key, column)

    def _add(
        self,
        path: Sequence[PathElem],
        severity: Literal["error", "warning"],
        message: str,
        key: bool,
        column: int | None,
    ) -> None:
        node = self.node(path, key)
        line = node.start_mark.line + 1 if node is not None else 1
        col = column if column is not None else (node.start_mark.column + 1 if node is not None else 1)
        self.problems.append(Problem(self.name, line, col, severity, message))

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

    def text_column(self, path: Sequence[PathElem]) -> int:
        """1-based column of the first character of a scalar's text (after its opening quote)."""
        node = self.node(path)
        if node is None:
            return 1
        quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
        return node.start_mark.column + 1 + (1 if quoted else 0)

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


# Shape limits: a config is a few levels deep and at most some 100k nodes. Anchors and aliases
# are allowed (`<<: *defaults`), but may not recurse or expand into a "billion laughs" that
# would hang the reload thread in the schema validator.
MAX_NODES = 2_000_000
MAX_DEPTH = 32


def read(path: Path, name: str) -> Source:
    src = Source(name)
    try:
        src.raw = path.read_bytes()
    except OSError as e:
        src.problems.append(Problem(name, 1, message=f"cannot read: {e.strerror}"))
        return src
    try:
        loader = _Loader(src.raw.decode("utf-8"))
        try:
            root = loader.get_single_node()
            if root is not None and _check_tree(src, root):
                src.root = root
                src.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        src.problems.append(Problem(name, 1, message=f"not UTF-8 text: {e.reason}"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        src.problems.append(Problem(name, line, col, message=f"YAML syntax error: {what}"))
        src.root = None
    except yaml.YAMLError as e:
        src.problems.append(Problem(name, 1, message=f"YAML error: {e}"))
        src.root = None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        src.problems.append(Problem(name, 1, message=f"nested deeper than {MAX_DEPTH} levels"))
        src.root = None
    return src


def _check_tree(src: Source, root: yaml.Node) -> bool:
    """Report duplicate keys (PyYAML keeps the last silently); False when the tree breaks the
    shape limits, so it is neither constructed nor validated."""
    checked: set[int] = set()
    count = 0
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(root, ())]
    while stack:
        node, ancestors = stack.pop()
        count += 1
        where = (node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in ancestors:
            src.problems.append(Problem(src.name, *where, message="recursive alias: a node contains itself"))
            return False
        if len(ancestors) >= MAX_DEPTH:
            src.problems.append(Problem(src.name, *where, message=f"nested deeper than {MAX_DEPTH} levels"))
            return False
        if count > MAX_NODES:
            src.problems.append(Problem(src.name, 1, message=f"more than {MAX_NODES} nodes once aliases are expanded"))
            return False
        inner = (*ancestors, id(node))
        if isinstance(node, yaml.MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                _duplicate_keys(src, node)
            stack.extend((child, inner) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, inner) for child in node.value)
    return True


def _duplicate_keys(src: Source, node: yaml.MappingNode) -> None:
    seen: dict[str, int] = {}
    for k, _v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            continue
        if k.value in seen:
            src.problems.append(
                Problem(
                    src.name,
                    k.start_mark.line + 1,
                    k.start_mark.column + 1,
                    message=f"duplicate key {k.value!r} (first at line {seen[k.value]}); YAML keeps only the last",
                )
            )
        else:
            seen[k.value] = k.start_mark.line + 1
