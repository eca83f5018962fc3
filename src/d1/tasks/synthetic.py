"""Deterministic synthetic Sudoku (4x4) and Countdown data in d1's file formats, with solvers and SFT traces."""

from __future__ import annotations

import csv
import io
import json
import operator
import random
from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

from d1.tasks.base import format_completion
from d1.tasks.countdown import countdown_question
from d1.tasks.sudoku import sudoku_question
from d1.tasks.tiny_code import make_tiny_code_problems

SUDOKU_EMPTY_CELLS = 8  # every puzzle in d1's 4x4_test_sudoku.csv has 8 empty cells
SUDOKU_MAX_EMPTY_CELLS = 12  # a 4x4 Sudoku needs at least 4 givens to have a unique solution
TEST_GRID_COUNT = 58  # about 20% of the 288 solution grids are reserved for test puzzles
COUNTDOWN_RANGE = (1, 100)  # numbers and targets of d1's countdown_cd3_test.jsonl lie in 1..100


# ---------------------------------------------------------------- Sudoku


def _units(index: int) -> Iterable[int]:
    row, col = divmod(index, 4)
    box = (row // 2) * 8 + (col // 2) * 2
    yield from range(row * 4, row * 4 + 4)
    yield from range(col, 16, 4)
    yield from (box, box + 1, box + 4, box + 5)


def _candidates(cells: list[str], index: int) -> list[str]:
    used = {cells[j] for j in _units(index)}
    return [d for d in "1234" if d not in used]


def _search(cells: list[str], limit: int, found: list[str]) -> None:
    """Depth-first fill of ``cells`` (``0`` = empty), appending complete grids to ``found`` up to ``limit``."""
    try:
        index = cells.index("0")
    except ValueError:
        found.append("".join(cells))
        return
    for digit in _candidates(cells, index):
        cells[index] = digit
        _search(cells, limit, found)
        cells[index] = "0"
        if len(found) >= limit:
            return


def sudoku_solutions(puzzle: str, limit: int = 2) -> list[str]:
    """Up to ``limit`` completions of a 4x4 puzzle (16 characters, ``0`` = empty)."""
    if len(puzzle) != 16 or any(c not in "01234" for c in puzzle):
        raise ValueError(f"not a 4x4 Sudoku string: {puzzle!r}")
    cells = list(puzzle)
    if any(
        cells[i] != "0" and cells[i] not in _candidates(cells[:i] + ["0"] + cells[i + 1 :], i)
        for i in range(16)
    ):
        return []  # the givens already clash
    found: list[str] = []
    _search(cells, limit, found)
    return found


@cache
def all_sudoku_grids() -> tuple[str, ...]:
    """All 288 valid 4x4 Sudoku grids, in lexicographic order."""
    return tuple(sudoku_solutions("0" * 16, limit=1000))


def make_sudoku_puzzle(solution: str, rng: random.Random, n_empty: int = SUDOKU_EMPTY_CELLS) -> str:
    """Blank ``n_empty`` cells of ``solution`` so that the puzzle keeps exactly one solution."""
    for _ in range(1000):
        cells = list(solution)
        for index in rng.sample(range(16), n_empty):
            cells[index] = "0"
        puzzle = "".join(cells)
        if len(sudoku_solutions(puzzle)) == 1:
            return puzzle
    raise ValueError(f"could not blank {n_empty} cells of {solution} with a unique solution")


def _sudoku_items(grids: list[str], n: int, rng: random.Random) -> list[dict[str, str]]:
    items, seen = [], set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not make {n} distinct puzzles from {len(grids)} grids")
        solution = grids[len(items) % len(grids)] if attempts <= n else rng.choice(grids)
        puzzle = make_sudoku_puzzle(solution, rng)
        if puzzle not in seen:
            seen.add(puzzle)
            items.append({"puzzle": puzzle, "solution": solution})
    return items


def _grid_partition(seed: int) -> tuple[list[str], list[str]]:
    grids = list(all_sudoku_grids())
    random.Random(f"{seed}-sudoku-grids").shuffle(grids)
    return grids[TEST_GRID_COUNT:], grids[:TEST_GRID_COUNT]


def make_sudoku_split(n: int, seed: int, split: str) -> list[dict[str, str]]:
    """``n`` distinct unique-solution puzzles of one split; the seed fixes which grids each split may use."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    train_grids, test_grids = _grid_partition(seed)
    grids = train_grids if split == "train" else test_grids
    return _sudoku_items(grids, n, random.Random(f"{seed}-sudoku-{split}"))


def check_empty_cells(value: Sequence[int], name: str = "empty_cells") -> tuple[int, int]:
    """``value`` as a ``(fewest, most)`` range of blanks per puzzle; a clear error naming ``name`` otherwise."""
    if len(value) != 2 or not 1 <= value[0] <= value[1] <= SUDOKU_MAX_EMPTY_CELLS:
        raise ValueError(
            f"{name}={list(value)} is not a range of blanks per 4x4 puzzle; give two numbers, fewest and most, "
            f"with 1 <= fewest <= most <= {SUDOKU_MAX_EMPTY_CELLS} (d1's test puzzles have {SUDOKU_EMPTY_CELLS})."
        )
    return value[0], value[1]


def reblank_sudoku(
    items: list[dict[str, str]], empty_cells: Sequence[int], seed: int
) -> list[dict[str, str]]:
    """New puzzles on the same solution grids, each with a number of blanks drawn from ``empty_cells``
    (inclusive): an RL curriculum whose easier puzzles a weak model solves often enough to be rewarded."""
    low, high = check_empty_cells(empty_cells)
    rng = random.Random(f"{seed}-sudoku-reblank")
    return [
        {
            "puzzle": make_sudoku_puzzle(item["solution"], rng, rng.randint(low, high)),
            "solution": item["solution"],
        }
        for item in items
    ]


def make_sudoku_splits(
    n_train: int, n_test: int, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and test puzzles whose solution grids never overlap (the 288 grids are partitioned by seed)."""
    return make_sudoku_split(n_train, seed, "train"), make_sudoku_split(n_test, seed, "test")


# ---------------------------------------------------------------- Countdown


class _Term:
    """A partial Countdown result: exact value, expression text and the steps that built it."""

    __slots__ = ("value", "text", "atom", "steps")

    def __init__(self, value: Fraction, text: str, atom: bool, steps: tuple[str, ...]) -> None:
        self.value, self.text, self.atom, self.steps = value, text, atom, steps

    def wrapped(self) -> str:
        return self.text if self.atom else f"({self.text})"


_OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _operand(value: Fraction) -> str:
    return _show(value) if value.denominator == 1 else f"({_show(value)})"


def _combine(a: _Term, b: _Term) -> Iterable[_Term]:
    """Every term one of + - * / makes from ``a`` and ``b`` (both orders for - and /, no division by 0)."""
    pairs = [(a, "+", b), (a, "*", b), (a, "-", b), (b, "-", a), (a, "/", b), (b, "/", a)]
    for left, op, right in pairs:
        if op == "/" and right.value == 0:
            continue
        value = _OPERATIONS[op](left.value, right.value)
        step = f"{_operand(left.value)} {op} {_operand(right.value)} = {_show(value)}"
        yield _Term(
            value, f"{left.wrapped()} {op} {right.wrapped()}", False, left.steps + right.steps + (step,)
        )


def _solve(terms: list[_Term], target: Fraction) -> _Term | None:
    if len(terms) == 1:
        return terms[0] if terms[0].value == target else None
    for i, j in combinations(range(len(terms)), 2):
        rest = [term for k, term in enumerate(terms) if k not in (i, j)]
        for combined in _combine(terms[i], terms[j]):
            found = _solve([*rest, combined], target)
            if found is not None:
                return found
    return None


def _countdown_solution(numbers: list[int], target: int) -> _Term | None:
    terms = [_Term(Fraction(n), str(n), True, ()) for n in numbers]
    return _solve(terms, Fraction(target))


def solve_countdown(numbers: list[int], target: int) -> str | None:
    """An expression using every number once with + - * / that equals ``target`` exactly, or ``None``."""
    found = _countdown_solution(numbers, target)
    return None if found is None else found.text


def make_countdown_problems(
    n: int, seed: int, n_numbers: int = 3, split: str = "test"
) -> list[dict[str, Any]]:
    """``n`` solvable problems ``{"numbers", "target"}``: numbers and integer target in 1..100."""
    rng = random.Random(f"{seed}-countdown-{split}-{n_numbers}")
    low, high = COUNTDOWN_RANGE
    problems: list[dict[str, Any]] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    while len(problems) < n:
        numbers = [rng.randint(low, high) for _ in range(n_numbers)]
        terms = [_Term(Fraction(x), str(x), True, ()) for x in numbers]
        while len(terms) > 1:  # a random expression tree over the numbers
            i, j = rng.sample(range(len(terms)), 2)
            options = list(_combine(terms[i], terms[j]))
            terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [rng.choice(options)]
        value = terms[0].value
        key = (tuple(sorted(numbers)), int(value))
        if value.denominator != 1 or not low <= value <= high or key in seen:
            continue
        if solve_countdown(numbers, int(value)) is None:  # cannot happen; guards the solver/generator pair
            raise AssertionError(f"generated problem {numbers} -> {value} has no solution")
        seen.add(key)
        problems.append({"numbers": numbers, "target": int(value)})
    return problems


# ---------------------------------------------------------------- files and SFT traces


GENERATED_TASKS = {"sudoku": ".csv", "countdown": ".jsonl", "tiny_code": ".jsonl"}
"""The tasks `make_dataset` generates, with the extension of their own file format."""

DATA_FILE_TYPES = (".csv", ".jsonl", ".json")
"""The formats `write_records` writes, named by the file's extension."""


def check_data_file_type(path: str | Path) -> None:
    """Fail before any work when `path`'s extension names no format `write_records` writes."""
    if Path(path).suffix.lower() not in DATA_FILE_TYPES:
        raise ValueError(
            f"output={str(path)!r}: the extension names the file format; use .csv, .jsonl or .json "
            "(d1's own: Sudoku .csv, Countdown .jsonl)."
        )


def write_records(records: list[dict[str, str]], path: str | Path) -> Path:
    """Write rows in the format `path`'s extension names: CSV with a header, JSON lines, or a JSON list; all at
    once (`write_atomic`), so a writer killed meanwhile leaves no truncated file for a later run to read."""
    from d1.utils import write_atomic

    check_data_file_type(path)
    path = Path(path)
    suffix = path.suffix.lower()
    text = io.StringIO()
    if suffix == ".csv":
        writer = csv.DictWriter(text, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    elif suffix == ".jsonl":
        text.writelines(json.dumps(record) + "\n" for record in records)
    else:
        json.dump(records, text, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text.getvalue())


def write_sudoku_csv(items: list[dict[str, str]], path: str | Path) -> Path:
    """Write puzzles with d1's columns ``Puzzle,Solution`` (d1's CSV; .jsonl/.json by `path`'s extension)."""
    return write_records([{"Puzzle": item["puzzle"], "Solution": item["solution"]} for item in items], path)


def write_countdown_jsonl(items: list[dict[str, Any]], path: str | Path) -> Path:
    """Write problems with d1's fields ``{"input": "a,b,c", "output": "t"}`` (d1's JSONL; .csv/.json by
    `path`'s extension)."""
    records = [
        {"input": ",".join(map(str, item["numbers"])), "output": str(item["target"])} for item in items
    ]
    return write_records(records, path)


def make_dataset(
    task_name: str,
    n: int,
    seed: int,
    output_path: str | Path,
    split: str = "test",
    empty_cells: Sequence[int] | None = None,
) -> Path:
    """Generate ``n`` items of ``sudoku``, ``countdown`` or ``tiny_code`` (AceCode's columns) for ``split`` and write them with d1's columns, in
    the format the output's extension names (.csv, .jsonl or .json; d1's own: Sudoku .csv, Countdown .jsonl).
    ``empty_cells`` (Sudoku only): blanks per puzzle drawn from this inclusive range instead of d1's 8."""
    check_data_file_type(output_path)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if n < 1:
        raise ValueError(f"n must be positive, not {n}")
    if empty_cells is not None and task_name != "sudoku":
        raise ValueError(
            f"empty_cells={list(empty_cells)} is a Sudoku option; drop it for task {task_name!r}."
        )
    if task_name == "sudoku":
        items = make_sudoku_split(n, seed, split)
        if empty_cells is not None:
            items = reblank_sudoku(items, empty_cells, seed)
        return write_sudoku_csv(items, output_path)
    if task_name == "countdown":
        return write_countdown_jsonl(make_countdown_problems(n, seed, split=split), output_path)
    if task_name == "tiny_code":
        problems = make_tiny_code_problems(n, seed, split=split)
        if Path(output_path).suffix.lower() == ".csv":  # a CSV cell holds the test list as JSON
            problems = [{**problem, "test_cases": json.dumps(problem["test_cases"])} for problem in problems]
        return write_records(problems, output_path)
    raise ValueError(f"no synthetic generator for task {task_name!r}; choose one of {list(GENERATED_TASKS)}")


def _sudoku_fill_order(puzzle: str, solution: str) -> list[tuple[int, str]]:
    """Empty cells in solving order: a cell with a single candidate first, else the first empty cell."""
    cells, order = list(puzzle), []
    while "0" in cells:
        empty = [i for i, c in enumerate(cells) if c == "0"]
        forced = [i for i in empty if _candidates(cells, i) == [solution[i]]]
        index = forced[0] if forced else empty[0]
        cells[index] = solution[index]
        order.append((index, "only candidate" if forced else "by elimination"))
    return order


SUDOKU_TRACES = ("steps", "cells", "none")


def _sudoku_trace(puzzle: str, solution: str, trace: str = "steps") -> list[str]:
    if trace not in SUDOKU_TRACES:
        raise ValueError(f"trace={trace!r} is unknown; use one of {SUDOKU_TRACES}.")
    if trace == "none":
        return []
    order = _sudoku_fill_order(puzzle, solution)
    if trace == "cells":  # one short line, e.g. "r1c3=2 r2c1=4 ...": cheap enough for tiny CPU models
        return [" ".join(f"r{i // 4 + 1}c{i % 4 + 1}={solution[i]}" for i, _ in order)]
    lines = [f"Empty cells are filled one at a time; the puzzle has {puzzle.count('0')} of them."]
    lines += [f"Row {i // 4 + 1}, column {i % 4 + 1}: {solution[i]} ({reason})" for i, reason in order]
    lines.append(f"The completed grid is {solution}.")
    return lines


def format_sft_example(item: dict[str, Any], trace: str = "steps") -> dict[str, str]:
    """Question text plus a d1-format completion (reasoning trace and answer) for a synthetic item.

    Sudoku items have ``puzzle``/``solution``; Countdown items ``numbers``/``target`` (the answer is
    ``\\boxed{expression}``, which d1's eval parser reads). Sudoku's ``trace``: ``steps`` (a line per cell
    with its reason), ``cells`` (one line of ``r{row}c{col}={digit}``) or ``none`` (the answer alone).
    """
    if "puzzle" in item:
        puzzle, solution = item["puzzle"], item["solution"]
        completion = format_completion(_sudoku_trace(puzzle, solution, trace), solution)
        return {"prompt": sudoku_question(puzzle), "completion": completion}
    numbers, target = list(item["numbers"]), int(item["target"])
    found = _countdown_solution(numbers, target)
    if found is None:
        raise ValueError(f"countdown item {numbers} -> {target} has no solution")
    reasoning = [
        f"We need {target} from {', '.join(str(x) for x in numbers)}, using each number exactly once.",
        *found.steps,
        f"So {found.text} = {target}.",
    ]
    return {
        "prompt": countdown_question(numbers, target),
        "completion": format_completion(reasoning, f"\\boxed{{{found.text}}}"),
    }
