"""Restricted arithmetic for Countdown answers: d1's verdicts without ``eval`` on model output.

d1 checks ``^[\\d+\\-*/().\\s]+$`` and then calls Python's ``eval``. We apply the same character check,
parse with :func:`ast.parse` (the same parser ``eval`` uses) and evaluate the tree ourselves with
Python's own number semantics (``int`` arbitrary precision, true ``/``, ``//``, ``float`` literals), so
every value ``eval`` would produce comes out identical. Deliberate deviations, all rejected as
invalid: ``**`` (``eval`` would happily compute ``30**100**93`` forever), expressions longer than
:data:`MAX_EXPRESSION_CHARS` or with more than :data:`MAX_NODES` syntax nodes, integers beyond
:data:`MAX_INT_BITS` bits, and non-numeric results such as ``()`` (where d1's parser would crash).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Sequence
from itertools import islice

MAX_EXPRESSION_CHARS = 10_000
MAX_NODES = 10_000
MAX_INT_BITS = 1_000_000

_ALLOWED_CHARS = re.compile(r"^[\d+\-*/().\s]+$")
_INTEGER_RUN = re.compile(r"\d+")

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,  # reachable through d1's character set ("//")
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _parse(expression: str) -> ast.expr | None:
    """Parse and whitelist the syntax tree; ``None`` for anything outside + - * / // and numbers."""
    if len(expression) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.match(expression):
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    count = 0
    for node in ast.walk(tree.body):
        count += 1
        if count > MAX_NODES:
            return None
        if isinstance(node, ast.BinOp):
            ok = type(node.op) in _BINARY
        elif isinstance(node, ast.UnaryOp):
            ok = type(node.op) in _UNARY
        elif isinstance(node, ast.Constant):
            ok = type(node.value) in (int, float)
        else:
            ok = isinstance(node, (ast.operator, ast.unaryop))
        if not ok:
            return None
    return tree.body


def _too_big(value: Number) -> bool:
    return isinstance(value, int) and value.bit_length() > MAX_INT_BITS


def evaluate_expression(expression: str) -> Number | None:
    """Value of an arithmetic expression as Python's ``eval`` computes it, or ``None`` if invalid.

    Invalid covers everything d1 maps to "could not evaluate" (bad characters, syntax errors,
    division by zero, float overflow) plus the deviations listed in the module docstring.
    """
    root = _parse(expression)
    if root is None:
        return None
    values: list[Number] = []
    stack: list[tuple[ast.expr, bool]] = [(root, False)]
    try:
        while stack:
            node, children_done = stack.pop()
            if isinstance(node, ast.Constant):
                values.append(node.value)
            elif not children_done:
                stack.append((node, True))
                if isinstance(node, ast.BinOp):
                    stack.append((node.right, False))
                    stack.append((node.left, False))
                else:
                    stack.append((node.operand, False))  # type: ignore[attr-defined]
            elif isinstance(node, ast.BinOp):
                right, left = values.pop(), values.pop()
                if (
                    isinstance(node.op, ast.Mult)
                    and isinstance(left, int)
                    and isinstance(right, int)
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS
                ):
                    return None
                values.append(_BINARY[type(node.op)](left, right))
            else:
                values.append(_UNARY[type(node.op)](values.pop()))  # type: ignore[attr-defined]
            if values and _too_big(values[-1]):
                return None
    except (ZeroDivisionError, OverflowError):
        return None
    return values[0]


def numbers_in_expression(expression: str, limit: int | None = None) -> list[int] | None:
    """The integer runs in the text (the first ``limit``), as d1's ``validate_equation`` reads them.

    ``None`` if a run is unreadable (too long for ``int``: d1's bare ``except`` returns False).
    """
    try:
        return [int(run.group()) for run in islice(_INTEGER_RUN.finditer(expression), limit)]
    except ValueError:
        return None


def uses_numbers_exactly(expression: str, numbers: Sequence[int]) -> bool:
    """d1's check that the expression uses each given number exactly once (sorted lists equal).

    Reading stops after one run more than ``numbers`` has: the lists differ then, however long the text.
    """
    found = numbers_in_expression(expression, len(numbers) + 1)
    if found is None or len(found) != len(numbers):
        return False
    try:
        return sorted(found) == sorted(numbers)
    except TypeError:
        return False


def hits_target(value: object, target: float | int | None) -> bool:
    """d1's ``abs(result - target) < 1e-5`` test, false for missing or non-numeric values."""
    if target is None or not isinstance(value, (int, float)):
        return False
    try:
        return abs(value - target) < 1e-5
    except (TypeError, OverflowError):
        return False
