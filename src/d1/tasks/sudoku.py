"""4x4 Sudoku: d1's prompt, cell-accuracy parsing and the RL rewards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from d1.tasks.base import (
    ParsedAnswer,
    Task,
    completion_texts,
    first_tag_content,
    format_completion,
    last_tag_content,
    read_records,
)

SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""
"""d1's ``SUDOKU_SYSTEM_PROMPT`` (the same text for eval and RL)."""

_PUZZLE_IN_QUESTION = re.compile(r"Sudoku puzzle: ([0-9]{16})")
# d1's extraction patterns, tried in order (re.search, re.DOTALL):
#   1. r"<answer>.*?```\s*([\d\s]+)```"              -> _fenced_digits
#   2. r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)" -> first_tag_content
#   3. r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)"
#   4. r".*?(\d{16})\s*</answer>": the last 16 digits of the first digit run (of 16 or more) that is
#      followed by whitespace and </answer>; matched from run starts only, as d1's tries every digit
#   5. r"\b(\d{16})\b"
# The first two rescan the text from every unclosed <answer> (and 1 from every fence), so they are
# single-pass scanners here; 3 and 5 are linear as regexes.
_END_MARKERS = ["<|eot_id|>", "<|endoftext|>"]
_AFTER_ANSWER = re.compile(r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", re.DOTALL)
_RUN_BEFORE_CLOSE = re.compile(r"(?<!\d)(\d{16,})\s*</answer>")
_SIXTEEN_DIGITS = re.compile(r"\b(\d{16})\b")
_BACKTICKS = re.compile(r"`+")
_DIGITS_AND_SPACE = re.compile(r"[\d\s]*")
_WHITESPACE = re.compile(r"\s*")


def sudoku_question(puzzle: str) -> str:
    """The question text d1 builds from a puzzle string (eval and RL)."""
    return f"Solve the following Sudoku puzzle: {puzzle}\n"


def puzzle_from_question(question: str) -> str:
    """The 16-digit puzzle inside a question, found as d1's parser does; ``ValueError`` if absent."""
    if len(question) >= 16 and question[:16].isdigit():
        return question[:16]
    match = _PUZZLE_IN_QUESTION.search(question)
    if not match:
        raise ValueError(f"no 16-digit Sudoku puzzle in question {question[:80]!r}")
    return match.group(1)


def _fenced_digits(text: str) -> str | None:
    """d1's first pattern: the digits and spaces between a code fence after ``<answer>`` and the next one.

    Only the first ``<answer>`` can match; fences are tried in order, each followed by one scan of its
    digit/space run, which must end at another fence (a run of backticks opens at most one fence). Leading
    whitespace is cut (d1's group keeps one space of an all-space run, which strips to nothing as well).
    """
    start = text.find("<answer>")
    if start < 0:
        return None
    pos = start + len("<answer>")
    while (fence := text.find("```", pos)) >= 0:
        ticks = _BACKTICKS.match(text, fence).end()  # in a longer run only the last three can open a fence
        end = _DIGITS_AND_SPACE.match(text, ticks).end()
        if end > ticks and text.startswith("```", end):
            return text[_WHITESPACE.match(text, ticks, end).end() : end]
        pos = ticks
    return None


def _solution_candidates(text: str) -> Iterator[str | None]:
    """What each of d1's five patterns captures, lazily in d1's order (``None`` where one does not match)."""
    yield _fenced_digits(text)
    yield first_tag_content(text, "<answer>", [*_END_MARKERS, "</answer>"])
    match = _AFTER_ANSWER.search(text)
    yield match.group(1) if match else None
    match = _RUN_BEFORE_CLOSE.search(text)
    yield match.group(1)[-16:] if match else None
    match = _SIXTEEN_DIGITS.search(text)
    yield match.group(1) if match else None


def extract_sudoku_solution(text: str) -> str:
    """d1's eval extraction: first non-empty match of its patterns, whitespace removed ('' if none)."""
    for candidate in _solution_candidates(text):
        if candidate and candidate.strip():
            return re.sub(r"\s", "", candidate.strip())
    return ""


def fit_to_grid(solution: str) -> str:
    """d1's length fix: pad with ``0`` or cut to 16 characters (an empty answer stays empty)."""
    return solution[:16].ljust(16, "0") if solution else ""


def count_correct_cells(solution: str, ground_truth: str, puzzle: str) -> tuple[int, int]:
    """(correct, empty) cells: the fitted ``solution`` compared with the truth on the puzzle's empty cells."""
    empty = [i for i in range(16) if puzzle[i] == "0"]
    solution = fit_to_grid(solution)
    if not solution:
        return 0, len(empty)
    return sum(1 for i in empty if solution[i] == ground_truth[i]), len(empty)


def sudoku_reward(text: str, puzzle: str, solution: str) -> float:
    """d1's RL score: fraction of the puzzle's empty cells right in the last ``<answer>`` (digits only)."""
    answer = last_tag_content(text, "<answer>", "</answer>")
    if answer is None:
        return 0.0
    digits = "".join(char for char in answer.strip() if char.isdigit())
    correct, empty = count_correct_cells(digits, solution, puzzle)
    return correct / empty if digits and empty else 0.0


def sudoku_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """Per-completion :func:`sudoku_reward`; needs ``puzzle`` and ``solution`` columns in ``kwargs``."""
    texts = completion_texts(completions)
    return [sudoku_reward(text, kwargs["puzzle"][i], kwargs["solution"][i]) for i, text in enumerate(texts)]


def sudoku_solved_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """1.0 where every empty cell is right (:func:`sudoku_reward` = 1), else 0.0: the puzzle solved.

    Not in d1 (weight 0 by default, so it is only logged). A binary reward gives no credit to partly wrong
    answers, which d1's cell fraction does (docs/rl-at-tiny-scale.md)."""
    return [float(r == 1.0) for r in sudoku_reward_func(prompts, completions, run_name, **kwargs)]


def _puzzle_rows(path: str | Path | None) -> list[dict[str, str]]:
    if path is None:
        raise ValueError("sudoku: d1's Sudoku data are local CSV files (Puzzle,Solution); pass a path")
    rows = read_records(path)
    for i, row in enumerate(rows):
        puzzle, solution = str(row.get("Puzzle", "")), str(row.get("Solution", ""))
        if len(puzzle) != 16 or len(solution) != 16:
            raise ValueError(f"{path}: row {i} needs 16-character 'Puzzle' and 'Solution' strings")
    return [{"puzzle": str(row["Puzzle"]), "solution": str(row["Solution"])} for row in rows]


class SudokuTask(Task):
    """4x4 Sudoku, scored by cell accuracy over the puzzle's empty cells."""

    name = "sudoku"
    system_prompt = SYSTEM_PROMPT
    default_subsample = 256
    train_holdout = 500
    reward_funcs = [sudoku_reward_func, sudoku_solved_reward_func]
    default_reward_weights = [1.0, 0.0]

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [
            {"question": sudoku_question(row["puzzle"]), "ground_truth": row["solution"]}
            for row in _puzzle_rows(path)
        ]

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [
            {
                "prompt": [
                    {"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{sudoku_question(row['puzzle'])}"}
                ],
                "puzzle": row["puzzle"],
                "solution": row["solution"],
            }
            for row in _puzzle_rows(path)
        ]

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        return {"question": sudoku_question(train_row["puzzle"]), "ground_truth": train_row["solution"]}

    def reference_completion(self, train_row: dict[str, Any]) -> str | None:
        """The solution grid in the answer-only SFT layout (`d1 demo`'s default ``--trace none``), short
        enough for the demo's 28-token completions."""
        return format_completion([], train_row["solution"])

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """d1's Sudoku grading: correct digits among the empty cells of the puzzle in ``question``."""
        puzzle = puzzle_from_question(question)
        if not isinstance(ground_truth, str) or len(ground_truth) != 16:
            raise ValueError(f"ground_truth must be the 16-digit solution string, not {ground_truth!r:.80}")
        solution = fit_to_grid(extract_sudoku_solution(text))
        correct, empty = count_correct_cells(solution, ground_truth, puzzle)
        return ParsedAnswer(
            extracted=solution, correct=empty > 0 and correct == empty, n_correct=correct, n_total=empty
        )


TASK = SudokuTask()
