"""Sudoku: d1's cell-accuracy parsing, RL reward values and the shared test file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.sudoku import (
    SYSTEM_PROMPT,
    extract_sudoku_solution,
    puzzle_from_question,
    sudoku_question,
    sudoku_reward_func,
    sudoku_solved_reward_func,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
TASK = get_task("sudoku")
PUZZLE = "4320004330100004"  # empty cells at 3, 4, 5, 9, 11, 12, 13, 14
SOLUTION = "4321124334122134"
QUESTION = sudoku_question(PUZZLE)


def _reference(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip("../shared/reference not found: reference fixtures absent")
    return path


@pytest.mark.parametrize(
    ("text", "extracted", "cells"),
    [
        (f"<answer>\n{SOLUTION}\n</answer>", SOLUTION, 8),
        ("<answer>\n4320004330120004\n</answer><|eot_id|>", "4320004330120004", 1),  # only cell 11 right
        ("<answer>\n```\n4321\n1243\n3412\n2134\n```\n</answer>", SOLUTION, 8),  # fenced block
        ("<answer>\n4321 1243 3412 2134\n</answer>", SOLUTION, 8),  # whitespace removed
        ("<answer>43211243</answer>", "4321124300000000", 3),  # padded with 0: cells 3, 4, 5
        (f"<answer>{SOLUTION}99</answer>", SOLUTION, 8),  # cut to 16
        (f"<answer>\n{SOLUTION}<|eot_id|>", SOLUTION, 8),  # unclosed tag ends at eot
        (f"</answer>\n{SOLUTION}<|endoftext|>", SOLUTION, 8),  # text after </answer>
        (f"grid {SOLUTION} done", SOLUTION, 8),  # any 16-digit run
        ("<answer>\nabcd\n</answer>", "abcd000000000000", 0),  # non-digits kept, scored wrong
        ("no answer at all", "", 0),
        ("", "", 0),
        ("<answer>１２３４</answer>", "１２３４000000000000", 0),  # full-width digits never match
    ],
)
def test_parse(text: str, extracted: str, cells: int) -> None:
    parsed = TASK.parse(text, SOLUTION, QUESTION)
    assert parsed.extracted == extracted
    assert (parsed.n_correct, parsed.n_total) == (cells, 8)
    assert parsed.correct is (cells == 8)


def test_extraction_order() -> None:
    # The <answer> content wins over a later 16-digit run.
    assert extract_sudoku_solution(f"<answer>12</answer> {SOLUTION}") == "12"


def test_puzzle_from_question() -> None:
    assert puzzle_from_question(QUESTION) == PUZZLE
    assert puzzle_from_question(PUZZLE) == PUZZLE
    with pytest.raises(ValueError, match="puzzle"):
        TASK.parse("x", SOLUTION, "no puzzle here")


def test_rl_reward_hand_worked() -> None:
    texts = [
        f"<answer>\n{SOLUTION}\n</answer>",  # 8/8
        "<answer>4321 1243 3412 2134</answer>",  # spaces dropped: 8/8
        "<answer>43211243</answer>",  # padded: cells 3, 4, 5 -> 3/8
        "<answer>\n4320004330120004\n</answer>",  # cell 11 only -> 1/8
        SOLUTION,  # no tags -> 0
        "<answer>x</answer>",  # no digits -> 0
        f"<answer>0</answer><answer>{SOLUTION}</answer>",  # last tag
    ]
    n = len(texts)
    kwargs = {"puzzle": [PUZZLE] * n, "solution": [SOLUTION] * n}
    expected = [1.0, 1.0, 0.375, 0.125, 0.0, 0.0, 1.0]
    assert sudoku_reward_func(None, texts, **kwargs) == expected
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert sudoku_reward_func(None, chat, run_name="r", **kwargs) == expected
    full = {"puzzle": [SOLUTION], "solution": [SOLUTION]}  # no empty cells -> 0.0 as in d1
    assert sudoku_reward_func(None, [f"<answer>{SOLUTION}</answer>"], **full) == [0.0]
    assert sudoku_solved_reward_func(None, texts, **kwargs) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_system_prompt_is_d1s() -> None:
    assert SYSTEM_PROMPT.startswith("\nPlease solve the following 4x4 Sudoku puzzle.")
    assert SYSTEM_PROMPT.endswith("[16-character solution string with no spaces or separators]\n</answer>\n")
    messages = TASK.build_messages(QUESTION)
    assert messages == [
        {
            "role": "user",
            "content": SYSTEM_PROMPT + "\n\n" + "Solve the following Sudoku puzzle: " + PUZZLE + "\n",
        }
    ]


def test_loads_d1_test_file_and_reproduces_d1_subsample() -> None:
    path = _reference("d1-data", "4x4_test_sudoku.csv")
    items = TASK.load_test(path)
    assert len(items) == 500
    assert items[0] == {
        "question": "Solve the following Sudoku puzzle: 3102200002100320\n",
        "ground_truth": "3142243142131324",
    }
    generations = json.loads(
        _reference("d1-generations", "sudoku_instruct_256_128_0_generations.json").read_text()
    )
    rank0 = TASK.load_test(path, subsample=256, seed=42)[0::7]
    assert [i["question"] for i in rank0] == [g["question"] for g in generations["generations"]]
    assert [i["ground_truth"] for i in rank0] == [g["ground_truth"] for g in generations["generations"]]


def test_training_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(f"Puzzle,Solution\n{PUZZLE},{SOLUTION}\n")
    (row,) = TASK.load_train(path)
    assert (row["puzzle"], row["solution"]) == (PUZZLE, SOLUTION)
    assert row["prompt"][0]["content"] == f"{SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {PUZZLE}\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("Puzzle,Solution\n123,456\n")
    with pytest.raises(ValueError, match="16-character"):
        TASK.load_test(bad)
    with pytest.raises(ValueError, match="local CSV"):
        TASK.load_train(None)
