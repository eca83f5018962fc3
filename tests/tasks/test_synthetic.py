"""Synthetic Sudoku/Countdown: uniqueness, disjoint splits, solvability, determinism, file formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.arithmetic import evaluate_expression, hits_target, uses_numbers_exactly
from d1.tasks.gsm8k import soft_format_reward_func
from d1.tasks.sudoku import sudoku_reward
from d1.tasks.synthetic import (
    all_sudoku_grids,
    format_sft_example,
    make_countdown_problems,
    make_dataset,
    make_sudoku_splits,
    reblank_sudoku,
    solve_countdown,
    sudoku_solutions,
)


def _is_valid_grid(grid: str) -> bool:
    rows = [grid[r * 4 : r * 4 + 4] for r in range(4)]
    cols = [grid[c::4] for c in range(4)]
    boxes = [grid[b : b + 2] + grid[b + 4 : b + 6] for b in (0, 2, 8, 10)]
    return all(sorted(unit) == list("1234") for unit in rows + cols + boxes)


def test_all_grids() -> None:
    grids = all_sudoku_grids()
    assert len(grids) == len(set(grids)) == 288
    assert all(_is_valid_grid(g) for g in grids)


def test_solution_counter() -> None:
    assert len(sudoku_solutions("0" * 16, limit=5)) == 5
    assert sudoku_solutions("4321124334122134") == ["4321124334122134"]
    assert sudoku_solutions("1100000000000000") == []  # clashing givens
    with pytest.raises(ValueError):
        sudoku_solutions("12")


def test_sudoku_splits() -> None:
    train, test = make_sudoku_splits(120, 60, seed=3)
    assert (len(train), len(test)) == (120, 60)
    for item in train + test:
        puzzle, solution = item["puzzle"], item["solution"]
        assert sudoku_solutions(puzzle, limit=2) == [solution]  # exactly one solution
        assert puzzle.count("0") == 8
        assert all(p in ("0", s) for p, s in zip(puzzle, solution, strict=True))
    assert not {i["solution"] for i in train} & {i["solution"] for i in test}
    assert len({i["puzzle"] for i in train}) == 120
    assert make_sudoku_splits(120, 60, seed=3) == (train, test)
    assert make_sudoku_splits(120, 60, seed=4)[1] != test


def test_sudoku_files_from_separate_calls_are_disjoint(tmp_path: Path) -> None:
    train_path = make_dataset("sudoku", 300, 7, tmp_path / "train.csv", split="train")
    test_path = make_dataset("sudoku", 40, 7, tmp_path / "test.csv", split="test")
    assert train_path.read_text().splitlines()[0] == "Puzzle,Solution"
    sudoku = get_task("sudoku")
    train_solutions = {row["solution"] for row in sudoku.load_train(train_path)}
    test_items = sudoku.load_test(test_path)
    assert len(test_items) == 40
    assert not train_solutions & {item["ground_truth"] for item in test_items}


def test_reblanked_puzzles_keep_their_grids_and_draw_blanks_from_the_range() -> None:
    train, _ = make_sudoku_splits(200, 1, seed=2)
    easier = reblank_sudoku(train, [2, 6], seed=2)
    assert [i["solution"] for i in easier] == [i["solution"] for i in train]
    blanks = [item["puzzle"].count("0") for item in easier]
    assert set(blanks) == {2, 3, 4, 5, 6}  # 200 draws from 5 values: every one appears
    for item in easier:
        assert sudoku_solutions(item["puzzle"], limit=2) == [item["solution"]]
        assert all(p in ("0", s) for p, s in zip(item["puzzle"], item["solution"], strict=True))
    assert reblank_sudoku(train, [2, 6], seed=2) == easier
    assert reblank_sudoku(train, [2, 6], seed=3) != easier
    assert {i["puzzle"].count("0") for i in reblank_sudoku(train[:20], [8, 8], seed=2)} == {8}


@pytest.mark.parametrize("bad", [[0, 4], [6, 2], [2, 13], [4]])
def test_bad_blank_ranges_name_the_field_and_the_fix(bad: list[int]) -> None:
    with pytest.raises(ValueError, match=r"empty_cells=\[.*fewest and most"):
        reblank_sudoku([], bad, seed=0)


def test_make_dataset_with_fewer_blanks(tmp_path: Path) -> None:
    path = make_dataset("sudoku", 30, 1, tmp_path / "rl.csv", split="train", empty_cells=[3, 3])
    rows = get_task("sudoku").load_train(path)
    assert len(rows) == 30 and all(row["puzzle"].count("0") == 3 for row in rows)
    with pytest.raises(ValueError, match="empty_cells=\\[3, 3\\] is a Sudoku option"):
        make_dataset("countdown", 3, 0, tmp_path / "c.jsonl", empty_cells=[3, 3])


def test_countdown_problems_are_solvable_and_deterministic() -> None:
    problems = make_countdown_problems(60, seed=11)
    assert problems == make_countdown_problems(60, seed=11)
    assert problems != make_countdown_problems(60, seed=12)
    for problem in problems + make_countdown_problems(10, seed=11, n_numbers=4):
        numbers, target = problem["numbers"], problem["target"]
        assert 1 <= target <= 100 and all(1 <= n <= 100 for n in numbers)
        expression = solve_countdown(numbers, target)
        assert expression is not None
        assert uses_numbers_exactly(expression, numbers)
        assert hits_target(evaluate_expression(expression), target)


def test_solve_countdown() -> None:
    assert solve_countdown([3, 4, 6], 8) == "6 / (3 / 4)"
    assert solve_countdown([49, 55, 53], 51) == "(49 + 55) - 53"
    assert solve_countdown([1, 1, 1], 100) is None


def test_countdown_file_round_trip(tmp_path: Path) -> None:
    path = make_dataset("countdown", 25, 5, tmp_path / "cd.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"input", "output"} and first["input"].count(",") == 2
    items = get_task("countdown").load_test(path)
    assert len(items) == 25
    train = get_task("countdown").load_train(
        make_dataset("countdown", 5, 5, tmp_path / "tr.jsonl", split="train")
    )
    assert len(train) == 5


def test_make_dataset_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="no synthetic generator"):
        make_dataset("gsm8k", 3, 0, "unused.csv")
    with pytest.raises(ValueError, match="split"):
        make_dataset("sudoku", 3, 0, "unused.csv", split="dev")


def test_sft_examples_grade_as_correct() -> None:
    train, _ = make_sudoku_splits(5, 1, seed=0)
    for item in train:
        example = format_sft_example(item)
        parsed = get_task("sudoku").parse(example["completion"], item["solution"], example["prompt"])
        assert parsed.correct
        assert sudoku_reward(example["completion"], item["puzzle"], item["solution"]) == 1.0
        # d1's layout; multi-line reasoning, so d1's format rewards (no re.DOTALL) give it 0 + 0
        assert re.fullmatch(r"<reasoning>\n.+\n</reasoning>\n<answer>\n\d{16}\n</answer>", example["completion"], re.S)
        assert soft_format_reward_func([example["completion"]]) == [0.0]
    for problem in make_countdown_problems(5, seed=0):
        example = format_sft_example(problem)
        assert example["prompt"] == f"Numbers: {problem['numbers']}\nTarget: {problem['target']}"
        assert example["completion"].startswith("<reasoning>\n")
        assert (
            get_task("countdown")
            .parse(example["completion"], [problem["numbers"], problem["target"]])
            .correct
        )
    fraction = format_sft_example({"numbers": [3, 4, 6], "target": 8})["completion"]
    assert "6 / (3/4) = 8" in fraction
    with pytest.raises(ValueError, match="no solution"):
        format_sft_example({"numbers": [1, 1, 1], "target": 100})
