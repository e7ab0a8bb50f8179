"""Scale expressions: the whitelist holds against hostile input; nothing is ever evaluated."""

from __future__ import annotations

import pytest

from edge_gateway.config.expr import ExprError, compile_scale


@pytest.mark.parametrize(
    ("src", "raw", "want"),
    [
        ("value / 10", 123, 12.3),
        ("value * 0.1 - 40", 500, 10.0),
        ("(value + 2) * 3", 1, 9),
        ("-value", 5, -5),
        ("+value", 5, 5),
        ("value // 4", 17, 4),
        ("value % 4", 17, 1),
        ("value ** 2", 3, 9),
        ("value ** -1", 4, 0.25),
        ("round(value / 3, 2)", 10, 3.33),
        ("abs(value)", -7, 7),
        ("min(value, 100)", 250, 100),
        ("max(value, 0, 1)", -3, 1),
    ],
)
def test_arithmetic(src: str, raw: float, want: float) -> None:
    assert compile_scale(src)(raw) == pytest.approx(want)


HOSTILE = [
    ("__import__('os').system('id')", "not allowed"),
    ("().__class__.__bases__", "not allowed"),
    ("value.real", "attribute access"),
    ("value.__class__", "attribute access"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("exec", "unknown name 'exec'"),
    ("x + 1", "unknown name 'x'"),
    ("lambda: 1", "Lambda"),
    ("[value for value in range(9)]", "ListComp"),
    ("'a' * 10", "only numbers"),
    ("value if value else 1", "IfExp"),
    ("value > 3", "Compare"),
    ("value[0]", "subscript"),
    ("9 ** 9 ** 9", "exponent must be a constant"),
    ("value ** value", "exponent must be a constant"),
    ("2 ** 1000", "exponent larger than 64"),
    ("value << 3", "operator LShift"),
    ("value & 1", "operator BitAnd"),
    ("~value", "Invert"),
    ("round(value, ndigits=2)", "keyword arguments"),
    ("min(value)", "takes 2..8 arguments"),
    ("True + value", "only numbers"),
    ("value; import os", "invalid expression"),
    ("(" * 30 + "value" + ")" * 30, ""),
    ("-" * 50 + "value", "nested deeper"),
    ("value + " * 40 + "1", "longer than"),
    ("round(value, -1000000000)", "digits must be an integer 0..15"),
    ("round(value, value)", "digits must be an integer"),
    ("value ** (1 + 1)", "exponent must be a constant"),
    ("globals()", "function 'globals' is not allowed"),
    ("value.__class__.__mro__[1].__subclasses__()", "not allowed"),
    ("f'{value}'", "JoinedStr"),
    ("b'x'", "only numbers"),
    ("1j * value", "only numbers"),
    ("{value}", "Set"),
    ("(value := 3)", "NamedExpr"),
    ("value\nimport os", "invalid expression"),
    ("42", "does not use `value`"),
    ("", "non-empty"),
]


@pytest.mark.parametrize(("src", "fragment"), HOSTILE)
def test_hostile_input_is_rejected_with_a_column(src: str, fragment: str) -> None:
    if src.startswith("((("):  # redundant parentheses are fine: they do not deepen the tree
        assert compile_scale(src)(2) == 2
        return
    with pytest.raises(ExprError) as e:
        compile_scale(src)
    assert fragment in e.value.message
    assert e.value.column >= 1


def test_column_points_into_the_expression() -> None:
    with pytest.raises(ExprError) as e:
        compile_scale("value * 2 + foo")
    assert e.value.column == 13


def test_runtime_errors_are_arithmetic_errors() -> None:
    s = compile_scale("100 / value")
    with pytest.raises(ArithmeticError, match="failed for value 0"):
        s(0)


def test_equality_by_source_and_inverse() -> None:
    assert compile_scale("value / 10") == compile_scale(" value / 10 ")
    assert hash(compile_scale("value / 10")) == hash(compile_scale("value / 10"))
    assert compile_scale("value / 10").inverse(4.2) == pytest.approx(42)
    assert compile_scale("value * 0.1 - 40").inverse(10) == pytest.approx(500)
    for non_affine in ("value ** 2", "abs(value)", "round(value / 3)", "min(value, 10)"):
        s = compile_scale(non_affine)
        assert not s.invertible
        with pytest.raises(ExprError, match="not affine"):
            s.inverse(1)


def test_power_is_bounded_at_runtime() -> None:
    """Nested constant powers stay float arithmetic: they overflow at once instead of
    building a huge integer in the acquisition thread."""
    s = compile_scale("((value ** 64) ** 64) ** 64")
    with pytest.raises(ArithmeticError):
        s(65535)
    with pytest.raises(ArithmeticError, match="no real value"):
        compile_scale("value ** 0.5")(-4)
    assert compile_scale("value ** 0.5")(16) == 4.0


def test_columns_count_leading_blanks() -> None:
    with pytest.raises(ExprError) as e:
        compile_scale("  value + foo")
    assert e.value.column == 11


def test_inverse_of_affine_forms() -> None:
    for src, raw in (("-value + 5", 7), ("(value - 32) * 5 / 9", 212), ("value * 1e-3", 1234), ("value", 9)):
        s = compile_scale(src)
        assert s.inverse(s(raw)) == pytest.approx(raw)
    with pytest.raises(ExprError, match="not affine"):
        compile_scale("value * 0 + 3").inverse(3)  # constant: no raw value to write
