"""Scale expressions: `value / 10`, `round(value * 0.1 - 40, 2)`. Parsed, never eval()'d.

The source is parsed with `ast.parse(mode="eval")` and walked against a whitelist; the
result is a tree of closures built once at load. Anything outside the whitelist is an
`ExprError` with the column, so `edge-cfg lint` can point at it. Exponents are bounded so
a config can't make the acquisition thread compute 9**9**9.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_gateway.config.source import PathElem, Source

Number = int | float
Fn = Callable[[Number], Number]

MAX_SOURCE = 200
MAX_DEPTH = 20
MAX_EXPONENT = 64
MAX_DIGITS = 15  # round(value, n): more digits than a float holds is meaningless

_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCS: dict[str, tuple[Callable[..., Number], int, int]] = {  # name: (fn, min args, max args)
    "round": (round, 1, 2),
    "abs": (abs, 1, 1),
    "min": (min, 2, 8),
    "max": (max, 2, 8),
}


class ExprError(ValueError):
    def __init__(self, message: str, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.column = column  # 1-based, within the expression text


class Scale:
    """A compiled scale expression; equal to another when the source text is equal."""

    __slots__ = ("source", "_fn", "_affine")

    def __init__(self, source: str, fn: Fn) -> None:
        self.source = source
        self._fn = fn
        self._affine: tuple[float, float] | None | bool = False  # False = not yet computed

    def __call__(self, value: Number) -> Number:
        try:
            return self._fn(value)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError) as e:
            raise ArithmeticError(f"scale {self.source!r} failed for value {value!r}: {e}") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scale) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Scale({self.source!r})"

    def __reduce__(self) -> tuple[Callable[[str], Scale], tuple[str]]:
        """Pickled as its source text and compiled again where it is loaded (the closures cannot
        travel): the loader child (config/isolated.py) sends it to the gateway so."""
        return compile_scale, (self.source,)

    @property
    def invertible(self) -> bool:
        return self._line() is not None

    def inverse(self, engineering: float) -> float:
        """The raw value that scales to `engineering` (for writes). Affine scales only."""
        line = self._line()
        if line is None:
            raise ExprError(f"scale {self.source!r} is not affine in value: writes through it are refused")
        slope, offset = line
        return (engineering - offset) / slope

    def _line(self) -> tuple[float, float] | None:
        """(slope, offset) when the expression is affine and not constant, found by sampling."""
        if self._affine is False:
            self._affine = _fit_line(self._fn)
        return self._affine  # type: ignore[return-value]


def _fit_line(fn: Fn) -> tuple[float, float] | None:
    try:
        y0, y1 = float(fn(0)), float(fn(1))
        slope, offset = y1 - y0, y0
        if slope == 0 or not math.isfinite(slope):
            return None
        for x in (-1000.0, -7.0, 2.5, 10.0, 333.0, 65535.0):
            y = float(fn(x))
            if not math.isclose(y, slope * x + offset, rel_tol=1e-9, abs_tol=1e-9):
                return None
    except (ArithmeticError, ValueError, TypeError):
        return None
    return slope, offset


def compile_scale(source: str) -> Scale:
    """Compile once at load; the closure tree then runs per sample without any parsing."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("scale must be a non-empty expression in `value`")
    if len(source) > MAX_SOURCE:
        raise ExprError(f"scale expression longer than {MAX_SOURCE} characters", MAX_SOURCE)
    text = source.strip()
    lead = len(source) - len(source.lstrip())  # columns are reported against `source` as written
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ExprError(f"invalid expression: {e.msg}", lead + (e.offset or 1)) from None
    try:
        fn = _compile(tree.body, 0)
    except ExprError as e:
        raise ExprError(e.message, lead + e.column) from None
    if "value" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}:
        raise ExprError("scale does not use `value`", lead + 1)
    return Scale(text, fn)


def _col(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0) + 1


def _compile(node: ast.AST, depth: int) -> Fn:
    """Compile `node`; a part without `value` is computed now, so a constant that is not a finite
    number (`1e309`, `1e300 ** 2`) or fails (`1 / 0`) is a lint error, not an error per sample."""
    fn = _compile_node(node, depth)
    if depth == 0 or not _constant(node):
        return fn
    try:
        c = fn(0)
    except OverflowError:
        raise ExprError(f"{_text(node)} overflows a float", _col(node)) from None
    except (ArithmeticError, ValueError, TypeError) as e:
        raise ExprError(f"{_text(node)} cannot be computed: {e}", _col(node)) from None
    if isinstance(c, float) and not math.isfinite(c):
        raise ExprError(f"{_text(node)} is {c}, not a finite number", _col(node))
    return lambda _v: c


def _constant(node: ast.AST) -> bool:
    return not any(isinstance(n, ast.Name) for n in ast.walk(node))


def _text(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:39] + "…"


def _compile_node(node: ast.AST, depth: int) -> Fn:
    if depth > MAX_DEPTH:
        raise ExprError(f"expression nested deeper than {MAX_DEPTH}", _col(node))
    d = depth + 1
    if isinstance(node, ast.Constant):
        c = node.value
        if isinstance(c, bool) or not isinstance(c, int | float):
            raise ExprError(f"only numbers are allowed, not {type(c).__name__} {c!r}", _col(node))
        return lambda _v: c
    if isinstance(node, ast.Name):
        if node.id != "value":
            raise ExprError(f"unknown name {node.id!r}: only `value` is allowed", _col(node))
        return lambda v: v
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _compile(node.operand, d)
        if isinstance(node.op, ast.USub):
            return lambda v: -inner(v)
        return inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op = _BINOPS[type(node.op)]
        left, right = _compile(node.left, d), _compile(node.right, d)
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and _constant(node.right) and right(0) == 0:
            what = "" if isinstance(node.right, ast.Constant) else f" ({_text(node.right)} is 0)"
            raise ExprError(f"division by zero{what}", _col(node.right))
        if isinstance(node.op, ast.Pow):
            _check_exponent(node.right)
            return lambda v: _power(left(v), right(v))
        return lambda v: op(left(v), right(v))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ExprError(f"function {name!r} is not allowed (only {', '.join(_FUNCS)})", _col(node))
        if node.keywords:
            raise ExprError("keyword arguments are not allowed", _col(node.keywords[0].value))
        fn, lo, hi = _FUNCS[node.func.id]
        if not lo <= len(node.args) <= hi:
            raise ExprError(f"{node.func.id}() takes {lo}..{hi} arguments, got {len(node.args)}", _col(node))
        if node.func.id == "round" and len(node.args) == 2:
            digits = node.args[1]
            if not (isinstance(digits, ast.Constant) and type(digits.value) is int and 0 <= digits.value <= MAX_DIGITS):
                # round(5, -10**9) would build 10**(10**9): only small literal digit counts.
                raise ExprError(f"round()'s digits must be an integer 0..{MAX_DIGITS}", _col(digits))
        args = [_compile(a, d) for a in node.args]
        return lambda v: fn(*(a(v) for a in args))
    what = type(node).__name__
    if isinstance(node, ast.Attribute):
        what = "attribute access"
    elif isinstance(node, ast.Subscript):
        what = "subscript"
    elif isinstance(node, ast.BinOp | ast.UnaryOp):
        what = f"operator {type(node.op).__name__}"
    raise ExprError(f"{what} is not allowed in a scale expression", _col(node))


def _power(base: Number, exponent: Number) -> Number:
    """`**` in float arithmetic: (value ** 64) ** 64 overflows at once instead of building a
    huge integer, and a negative base with a fractional exponent is an error, not a complex."""
    result = float(base) ** exponent
    if not isinstance(result, float):
        raise ValueError(f"{base!r} ** {exponent!r} has no real value")
    return result


def _check_exponent(node: ast.AST) -> None:
    """Only constant exponents of bounded size: `value ** 2` yes, `value ** value` or `9 ** 99` no."""
    inner = node.operand if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd) else node
    if not isinstance(inner, ast.Constant) or isinstance(inner.value, bool) or not isinstance(inner.value, int | float):
        raise ExprError("the exponent must be a constant number", _col(node))
    if abs(inner.value) > MAX_EXPONENT:
        raise ExprError(f"exponent larger than {MAX_EXPONENT}", _col(node))


NUMERIC = frozenset({"uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64", "float", "double"})


def compile_for_tag(
    src: Source, path: Sequence[PathElem], tag: str, datatype: str, text: str
) -> tuple[Scale | None, bool]:
    """Compile a tag's `scale` for the loaders, reporting at `path` (the scale node) in `src`.
    Returns (scale, ok); the column in a message is the column in the file."""
    if datatype not in NUMERIC:
        src.error(path, f"{tag}: scale applies to numeric datatypes, not {datatype}")
        return None, False
    try:
        return compile_scale(text), True
    except ExprError as e:
        col = src.text_column(path) + e.column - 1
        src.error(path, f"{tag}: scale: {e.message} (column {col})", column=col)
        return None, False
