"""YAML with line numbers: every problem in a config must point at `file:line`.

PyYAML's composed node tree keeps marks; we build the data from it and keep the tree to
map a JSON path (as jsonschema reports it) back to the line of the offending node.
PyYAML also takes the last of duplicate keys silently, so duplicates are found here.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edge_gateway.config.problems import Problem

PathElem = str | int

# libyaml's parser when PyYAML has it (Buildroot's always does): its nodes carry the same marks, and
# it is several times faster and leaves a much smaller heap behind on a 10 000-tag config.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.1 scalars that PyYAML turns into something else than the text the user wrote.
_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


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


# The files whose top level is a table of named entries, and what an entry is called in a message.
_ENTRY = {"endpoints": "endpoint", "drivers": "driver", "connector": "connector"}


def item(src: Source, path: Sequence[PathElem]) -> str:
    """The entry `path` lies in, named for a reader: `tag plant.flow_m3h` (variables.yml, by its
    tag), `endpoint plc_tcp`, `driver meter1`, `connector mqtt_cloud`; "" for gateway.yml or the top
    level. A variable whose own tag is the problem (or has none) is `variable N`, N counting from 1."""
    if not path:
        return ""
    kind = Path(src.name).stem
    head = path[0]
    if kind == "variables" and isinstance(head, int):
        data = src.data
        entry = data[head] if isinstance(data, list) and 0 <= head < len(data) else None
        tag = entry.get("tag") if isinstance(entry, dict) else None
        if isinstance(tag, str) and tag and tuple(path[1:2]) != ("tag",):
            return f"tag {tag}"
        return f"variable {head + 1}"
    if kind in _ENTRY:
        return f"{_ENTRY[kind]} {head}"
    return ""


def key_path(src: Source, path: Sequence[PathElem]) -> str:
    """The key inside the entry, as written in YAML: `opts.parity`, `cfg.subscriptions[0].topic`
    (gateway.yml has no entries: `wal.flush_ms`)."""
    rest = path[1:] if item(src, path) else path
    out = ""
    for elem in rest:
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out


def where(src: Source, path: Sequence[PathElem]) -> str:
    """`tag plant.flow_m3h: datatype`, `endpoint plc_tcp: opts.timeout`, `wal.flush_ms`; the
    prefix of a message about the value at `path`."""
    return ": ".join(x for x in (item(src, path), key_path(src, path)) if x)


# Shape limits: a config is a few levels deep and at most some 100k nodes. Anchors and aliases
# are allowed (`<<: *defaults`), but may not recurse or expand into a "billion laughs" that
# would hang the reload thread in the schema validator.
MAX_NODES = 2_000_000
MAX_DEPTH = 32
MAX_BYTES = 32 << 20  # a 10 000-tag variables.yml is ~1.5 MB; beyond this it is not a config
MAX_INT_CHARS = 100  # no setting takes an integer this long; Python refuses to print > 4300 digits

# What YAML allows in a stream (tab, LF, CR and printable Unicode). libyaml refuses the rest with a
# multi-line message and a character offset; found here first, it is reported at its line.
_NOT_YAML = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COLLECTION_START = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_COLLECTION_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Mark:
    """Where a node starts, which is all a Problem and a YAML error here use of a mark."""

    __slots__ = ("line", "column")
    name = ""
    index = pointer = 0
    buffer = None

    def __init__(self, line: int, column: int) -> None:
        self.line, self.column = line, column

    def get_snippet(self, indent: int = 4, max_length: int = 75) -> None:
        return None

    def __str__(self) -> str:
        return f"  line {self.line + 1}, column {self.column + 1}"


class _Positioned:
    """A node that keeps its line and column as two ints and makes its mark when asked. PyYAML's
    composer gives every node two full marks (name, index, line, column, buffer, pointer): on a
    10 000-tag variables.yml that is 260 000 objects, and the heap keeps their size after the tree
    is gone (freed small objects stay in the interpreter's arenas)."""

    line: int
    column: int

    @property
    def start_mark(self) -> _Mark:
        return _Mark(self.line, self.column)

    end_mark = start_mark


# PyYAML's classes, untyped here: its stubs type the composer's hooks loosely and the nodes' marks as
# attributes, which _Positioned replaces with properties.
_ScalarNode: Any = yaml.ScalarNode
_SequenceNode: Any = yaml.SequenceNode
_MappingNode: Any = yaml.MappingNode
_Composer: Any = yaml.composer.Composer


class _Scalar(_Positioned, _ScalarNode):  # type: ignore[misc]
    def __init__(self, tag: str, value: str, line: int, column: int, style: str | None) -> None:
        self.tag, self.value, self.line, self.column, self.style = tag, value, line, column, style


class _Sequence(_Positioned, _SequenceNode):  # type: ignore[misc]
    def __init__(self, tag: str, line: int, column: int, flow_style: bool | None) -> None:
        self.tag, self.line, self.column, self.flow_style = tag, line, column, flow_style
        self.value: list[yaml.Node] = []


class _Mapping(_Positioned, _MappingNode):  # type: ignore[misc]
    def __init__(self, tag: str, line: int, column: int, flow_style: bool | None) -> None:
        self.tag, self.line, self.column, self.flow_style = tag, line, column, flow_style
        self.value: list[tuple[yaml.Node, yaml.Node]] = []


class _TooDeep(Exception):
    """A collection nested deeper than MAX_DEPTH, at its start (0-based line and column)."""

    def __init__(self, line: int, column: int) -> None:
        super().__init__(line, column)
        self.line, self.column = line, column


class _CompactComposer(_Composer):  # type: ignore[misc]
    """PyYAML's composer (anchors, aliases and tag resolution unchanged) building _Positioned nodes,
    with one str object per distinct short scalar text (`holding`, `datatype`, …) in a file. It
    recurses once per level, in Python: it stops at the first collection nested deeper than
    MAX_DEPTH (_TooDeep), so a hostile `[[[[…` never gets near the recursion limit."""

    def compose_scalar_node(self, anchor: str | None) -> yaml.ScalarNode:
        event = self.get_event()
        tag = event.tag
        value = event.value
        short = len(value) <= 32
        if tag is None or tag == "!":
            # The implicit resolver is a pure function of the text (the safe loader has no path
            # resolvers) and its regex scan is most of a scalar's cost: a 10 000-tag file repeats
            # `holding`, `uint16`, `address` ten thousand times, so remember it per short text.
            key = (value, event.implicit)
            tag = self.resolved.get(key) if short else None
            if tag is None:
                tag = self.resolve(yaml.ScalarNode, value, event.implicit)
                if short:
                    self.resolved[key] = tag
        if short:
            value = self.texts.setdefault(value, value)
        mark = event.start_mark
        node = _Scalar(tag, value, mark.line, mark.column, event.style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def _open_collection(self, kind: type, cls: type, anchor: str | None) -> Any:
        """The node a SequenceStart/MappingStart event opens: tag resolved, anchor registered."""
        start = self.get_event()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeep(start.start_mark.line, start.start_mark.column)
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(kind, None, start.implicit)
        node = cls(tag, start.start_mark.line, start.start_mark.column, start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:
        node = self._open_collection(yaml.SequenceNode, _Sequence, anchor)
        index = 0
        while not self.check_event(yaml.SequenceEndEvent):
            node.value.append(self.compose_node(node, index))
            index += 1
        self.get_event()
        self.depth -= 1
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = self._open_collection(yaml.MappingNode, _Mapping, anchor)
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            node.value.append((key, self.compose_node(node, key)))
        self.get_event()
        self.depth -= 1
        return node


class _ConfigLoader(_CompactComposer, _Loader):  # type: ignore[valid-type,misc]
    """The safe loader (libyaml's parser when present) with the compact composer above, and every
    constructor failure turned into a marked YAML error: PyYAML raises bare ValueError/TypeError/
    KeyError for `!!int x`, `!!bool x`, a date like 2026-13-45."""

    def __init__(self, stream: str) -> None:
        _Loader.__init__(self, stream)
        self.anchors: dict[str, yaml.Node] = {}
        self.texts: dict[str, str] = {}
        self.resolved: dict[tuple[str, Any], str] = {}
        self.depth = 0

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:
            text = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
            what = f"cannot read{text[:80]} as {node.tag.rsplit(':', 1)[-1]}: {e}"
            raise yaml.constructor.ConstructorError(None, None, what, node.start_mark) from e


def read(path: Path, name: str) -> Source:
    """Parse one file; every failure (unreadable, not UTF-8, not YAML, too deep, too big) becomes
    a Problem at its line, never an exception: lint and a live reload read untrusted edits."""
    src = Source(name)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reload thread in read()
            src.problems.append(Problem(name, 1, message="cannot read: not a regular file"))
            return src
        if st.st_size > MAX_BYTES:
            src.problems.append(Problem(name, 1, message=f"larger than {MAX_BYTES >> 20} MiB: not a configuration"))
            return src
        src.raw = path.read_bytes()
    except OSError as e:
        src.problems.append(Problem(name, 1, message=f"cannot read: {e.strerror or e}"))
        return src
    try:
        text = src.raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _position(src.raw, e.start, b"\n")
        bad = src.raw[e.start : e.start + 1].hex()
        src.problems.append(Problem(name, line, col, message=f"not UTF-8 text: {e.reason} (byte 0x{bad})"))
        return src
    char = _NOT_YAML.search(text)
    if char is not None:
        line, col = _position(text, char.start(), "\n")
        src.problems.append(
            Problem(
                name,
                line,
                col,
                message=f"character U+{ord(char.group()):04X} is not allowed in YAML, not even quoted "
                '(write it as an escape in a "double-quoted" string)',
            )
        )
        return src
    try:
        loader = _ConfigLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None and _check_tree(src, root):
                src.root = root
                src.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except _TooDeep as e:
        src.problems.append(Problem(name, e.line + 1, e.column + 1, message=f"nested deeper than {MAX_DEPTH} levels"))
        src.root = src.data = None
    except yaml.MarkedYAMLError as e:
        src.root = src.data = None
        if _deep_before(src, text):
            return src
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        src.problems.append(Problem(name, line, col, message=f"YAML syntax error: {what}"))
        src.root = src.data = None
    except yaml.reader.ReaderError as e:  # kept out by _NOT_YAML; its position is a character offset
        line, col = _position(text, e.position, "\n")
        src.problems.append(Problem(name, line, col, message=f"YAML error: {e.reason}"))
        src.root = src.data = None
    except yaml.YAMLError as e:
        src.problems.append(Problem(name, 1, message=f"YAML error: {e}"))
        src.root = src.data = None
    except RecursionError:  # kept out by _nesting_ok; a last line of defence for the pure-Python loader
        src.problems.append(Problem(name, 1, message=f"nested deeper than {MAX_DEPTH} levels"))
        src.root = src.data = None
    return src


def _position(text: Any, offset: int, newline: Any) -> tuple[int, int]:
    """1-based (line, column) of a character (or byte) offset."""
    line_start = text.rfind(newline, 0, offset) + 1
    return text.count(newline, 0, offset) + 1, offset - line_start + 1


def _deep_before(src: Source, text: str) -> bool:
    """After a YAML error: is there a collection nested too deep anywhere in the stream (a second
    document, or past an undefined alias, that the composer never reached)? Reported instead, as
    it always was: the depth is checked before anything else is said about a file."""
    try:
        return not _nesting_ok(src, text)
    except yaml.YAMLError:
        return False


def _nesting_ok(src: Source, text: str) -> bool:
    """Walk the parser's events (libyaml's parser is iterative) and stop at the first collection
    nested deeper than MAX_DEPTH. A composer recurses once per level (libyaml's own in C, where
    100 000 `[` overflow the C stack): ours stops itself at the same collection (_TooDeep), and this
    walk runs only after a YAML error, to report a too-deep collection the composer did not reach."""
    parser = _Loader(text)
    depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, _COLLECTION_START):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    deep = f"nested deeper than {MAX_DEPTH} levels"
                    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
                    src.problems.append(Problem(src.name, line, col, message=deep))
                    return False
            elif isinstance(event, _COLLECTION_END):
                depth -= 1
    finally:
        parser.dispose()
    return True


def _check_tree(src: Source, root: yaml.Node) -> bool:
    """Report duplicate keys (PyYAML keeps the last silently), keys that are not names and
    integers no setting could take; False when the tree breaks those or the shape limits, so it
    is neither constructed nor validated."""
    checked: set[int] = set()
    count = 0
    ok = True
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(root, ())]
    while stack:
        node, ancestors = stack.pop()
        count += 1
        if not isinstance(node, yaml.ScalarNode) and id(node) in ancestors:  # only a collection can contain
            src.problems.append(Problem(src.name, *_at(node), message="recursive alias: a node contains itself"))
            return False
        if len(ancestors) >= MAX_DEPTH:
            src.problems.append(Problem(src.name, *_at(node), message=f"nested deeper than {MAX_DEPTH} levels"))
            return False
        if count > MAX_NODES:
            src.problems.append(Problem(src.name, 1, message=f"more than {MAX_NODES} nodes once aliases are expanded"))
            return False
        if isinstance(node, yaml.ScalarNode):  # most nodes: checked without building their ancestry
            if node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
                long = f"an integer of {len(node.value)} characters: no setting takes one"
                src.problems.append(Problem(src.name, *_at(node), message=long))
                ok = False
            continue
        inner = (*ancestors, id(node))
        if isinstance(node, yaml.MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                _duplicate_keys(src, node)
                ok = _names_as_keys(src, node) and ok
            stack.extend((child, inner) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, inner) for child in node.value)
    return ok


def _at(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) of a node, for a problem (its mark is made only then)."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def _names_as_keys(src: Source, node: yaml.MappingNode) -> bool:
    """Every key of a config mapping is a name (an id or a setting). YAML reads `1:`, `on:`, `~:`
    or `[a]:` as something else, which the schema validator cannot even match against a pattern."""
    ok = True
    for k, _v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag in (_STR_TAG, _MERGE_TAG):
            continue
        shown = repr(k.value) if isinstance(k, yaml.ScalarNode) else f"a {k.id}"
        kind = k.tag.rsplit(":", 1)[-1]
        src.problems.append(
            Problem(
                src.name,
                k.start_mark.line + 1,
                k.start_mark.column + 1,
                message=f"key {shown[:80]} is read by YAML as {kind}, not a name: quote it",
            )
        )
        ok = False
    return ok


def _duplicate_keys(src: Source, node: yaml.MappingNode) -> None:
    seen: dict[str, yaml.Node] = {}
    for k, _v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            continue
        first = seen.setdefault(k.value, k)
        if first is not k:
            src.problems.append(
                Problem(
                    src.name,
                    *_at(k),
                    message=f"duplicate key {k.value!r} (first at line {_at(first)[0]}); YAML keeps only the last",
                )
            )


def secret_file(src: Source, path: tuple[str, ...], resolved: str) -> bool:
    """A password file the gateway reads when it connects: a missing one is found now, not at the
    first (re)connect of a running gateway."""
    p = Path(resolved)
    if p.is_file():
        return True
    why = "is not a file" if p.exists() else "does not exist"
    src.error(path, f"{where(src, path)}: {resolved} {why}")
    return False


def positive(src: Source, path: tuple[str, ...], value: Any, parse: Callable[[Any], float]) -> bool:
    """A period that paces a loop (polling, a timeout, a backoff, a rate): zero would spin the loop
    or divide by zero in the line or uplink thread, so it is an error here."""
    if value is None or parse(value) > 0:
        return True
    src.error(path, f"{where(src, path)} {value!r} is zero; it must be positive")
    return False
