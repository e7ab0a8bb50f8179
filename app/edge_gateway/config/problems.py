"""A configuration problem, `file:line: message`, and the error that carries them: kept apart from the
YAML reader (source.py) so that a process which only receives problems (the gateway, from its loader
child: config/isolated.py) imports neither PyYAML nor jsonschema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# A printed problem is one line of visible text: whatever the file name or a value echoed in the
# message holds, what is not printable (controls, line and paragraph separators, bidi overrides
# such as U+202E, non-ASCII spaces) is shown as a Python escape, \\n, \\x00, \\u202e.
MAX_MESSAGE = 1000  # a schema message quotes the offending value; a 1 MB value is not worth printing


def printable(text: str) -> str:
    """`text` as one line of visible characters (str.isprintable, plus the ASCII space)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
        message = self.message if len(self.message) <= MAX_MESSAGE else self.message[: MAX_MESSAGE - 1] + "…"
        message = printable(message)
        return f"{printable(self.file)}:{self.line}: {tag}{message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
