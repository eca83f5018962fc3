"""Restricted Countdown arithmetic: d1's eval verdicts without eval, and bounded work."""

from __future__ import annotations

import time

import pytest

from d1.tasks import arithmetic
from d1.tasks.arithmetic import evaluate_expression, hits_target, numbers_in_expression, uses_numbers_exactly


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("49 + 55 - 53", 51),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),  # "//" passes d1's character check and is floor division in eval
        ("-3 + 5", 2),
        ("+3", 3),
        ("--3", 3),
        ("1.5 * 2", 3.0),
        (".5 + .5", 1.0),
        ("5.", 5.0),
        ("  (49 + 55) - 53 \n", 51),
        ("(1 +\n 2)", 3),
        ("8 / 3 * 3", 8.0),
        ("99999999 * 99999999", 9999999800000001),
    ],
)
def test_evaluates_like_python(expression: str, expected: float) -> None:
    value = evaluate_expression(expression)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "expression",
    [
        "1/0",
        "1 // 0",
        "5 / (3 - 3)",
        "2**3",  # deliberate deviation: d1's eval would accept it
        "abs(1)",
        "__import__('os')",
        "1 if 1 else 2",
        "()",
        "()*3",
        "(1)(2)",
        "[1]",
        "'1'",
        "1e5",
        "01",
        "1 2",
        "",
        "   ",
        "1 + ",
        "x + 1",
        "1 ＋ 2",  # full-width plus
        "١ + ٢",  # Arabic-Indic digits pass the regex but are not Python literals
        "1;2",
        "lambda: 1",
    ],
)
def test_invalid_expressions(expression: str) -> None:
    assert evaluate_expression(expression) is None


@pytest.mark.parametrize(
    "bomb",
    ["30**100**93", "9**9**9**9", "(2**100)**(2**100)", "2**-1", "10**10**10 - 10**10**10"],
)
def test_power_bombs_are_rejected_fast(bomb: str) -> None:
    start = time.perf_counter()
    assert evaluate_expression(bomb) is None
    assert time.perf_counter() - start < 0.5


def test_size_limits() -> None:
    start = time.perf_counter()
    assert evaluate_expression("1+" * 6000 + "1") is None  # over MAX_EXPRESSION_CHARS
    assert evaluate_expression("(" * 300 + "1" + ")" * 300) is None  # Python's own nesting limit
    long_product = "1" + "*99999999" * 1000  # ~9k characters, 26k-bit result: still evaluated exactly
    assert evaluate_expression(long_product) == 99999999**1000
    assert time.perf_counter() - start < 2.0


def test_magnitude_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arithmetic, "MAX_INT_BITS", 64)
    assert evaluate_expression("4294967296 * 4294967296 * 2") is None
    assert evaluate_expression("4294967296 * 2") == 8589934592


def test_float_overflow_and_huge_literals() -> None:
    assert evaluate_expression("9" * 400 + ".0") == float("inf")  # eval gives inf too
    assert evaluate_expression("1" + "0" * 400 + " / 3") is None  # OverflowError in eval as well
    assert not hits_target(evaluate_expression("9" * 400 + ".0"), 51)


def test_numbers_check() -> None:
    assert uses_numbers_exactly("49 + 55 - 53", [53, 49, 55])
    assert not uses_numbers_exactly("49 + 55", [49, 55, 53])
    assert not uses_numbers_exactly("49 + 49 + 55 - 53", [49, 55, 53])
    assert uses_numbers_exactly("1.5", [1, 5])  # d1 reads integer runs, so decimals split
    assert not uses_numbers_exactly("4 9", [49])
    assert numbers_in_expression("(3 + 4) * 10") == [3, 4, 10]
    assert numbers_in_expression("9" * 5000) is None  # too long for int(): d1 says "not valid"
    assert not uses_numbers_exactly("9" * 5000, [1])


def test_hits_target() -> None:
    assert hits_target(51, 51)
    assert hits_target(51.000001, 51)
    assert not hits_target(51.0001, 51)
    assert not hits_target(None, 51)
    assert not hits_target(51, None)
    assert not hits_target((), 51)
    assert hits_target(10**400 + 51 - 10**400, 51)
