"""Tolerant looks into one gateway.yml setting, without loading or validating the config directory.

`edge-ctl --config DIR` needs only `control.socket`, and needs it most when the directory has just been
broken by an edit (that is when `status`, `tail` and `reload` are run), so it reads that one key from
that one file and falls back to the default socket when the file is unreadable. The running gateway
uses `where()` to name the file and line of a setting in an error ("gateway.yml:13 metrics.listen").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_SOCKET = "/run/edge-gateway/control.sock"  # GatewayCfg.control_socket; kept in step by a test


def control_socket(directory: str | Path) -> tuple[str, str | None]:
    """(the socket path, a note for the user when gateway.yml could not be used and the default is taken).

    Relative paths are relative to the directory, as the loader resolves them."""
    d = Path(directory)
    f = d / "gateway.yml"
    try:
        text = f.read_text()
    except FileNotFoundError:
        return DEFAULT_SOCKET, None  # no gateway.yml: the gateway runs on its defaults too
    except (OSError, UnicodeDecodeError) as e:
        return DEFAULT_SOCKET, f"{f}: unreadable ({e}); trying the default socket {DEFAULT_SOCKET}"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        return DEFAULT_SOCKET, f"{f}{at}: not YAML; trying the default socket {DEFAULT_SOCKET}"
    control = doc.get("control") if isinstance(doc, dict) else None
    sock = control.get("socket") if isinstance(control, dict) else None
    if sock is None:
        return DEFAULT_SOCKET, None
    if not isinstance(sock, str) or not sock:
        return DEFAULT_SOCKET, f"{f}: control.socket is not a path; trying the default socket {DEFAULT_SOCKET}"
    p = Path(sock)
    return str(p if p.is_absolute() else (d / p).resolve()), None


def where(directory: str | None, *keys: str) -> str:
    """`/etc/edge-gateway/gateway.yml:13 metrics.listen`; without a line when the key is not in the file
    (a default) or the file cannot be read now."""
    dotted = ".".join(keys)
    if not directory:
        return f"gateway.yml {dotted}"
    f = Path(directory) / "gateway.yml"
    line = _line_of(f, keys)
    if line is None:
        return f"{f} {dotted} (default)" if f.exists() else f"{f} {dotted}"
    return f"{f}:{line} {dotted}"


def _line_of(f: Path, keys: tuple[str, ...]) -> int | None:
    try:
        node: Any = yaml.compose(f.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if node is None:
            return None
    return int(node.start_mark.line) + 1
