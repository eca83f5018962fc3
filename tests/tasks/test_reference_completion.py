"""`Task.reference_completion` (IGPO's hints): the reference earns the task's own default rewards in full."""

from __future__ import annotations

import json
from pathlib import Path

from d1.tasks import get_task
from d1.tasks.gsm8k import soft_format_ok
from d1.tasks.synthetic import format_sft_example, make_sudoku_split, write_sudoku_csv

GSM8K_ROWS = [  # the layout of openai/gsm8k's train split: worked steps with calculator annotations, then ####
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {"question": "How much is 1000 - 1?", "answer": "1000 - 1 = <<1000-1=999>>999\n\n#### 999"},
]


def default_rewards(task_name: str, rows: list[dict], completions: list[str]) -> list[list[float]]:
    """Each default reward function's value per completion, called as the trainer does (columns as kwargs)."""
    task = get_task(task_name)
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    prompts = [r["prompt"] for r in rows]
    per_function = [f(prompts=prompts, completions=chat, **columns) for f in task.reward_funcs]
    return [list(values) for values in zip(*per_function, strict=True)]


def test_sudoku_reference_is_the_solution_in_the_sft_layout_with_full_reward(tmp_path: Path):
    items = make_sudoku_split(4, seed=0, split="train")
    path = write_sudoku_csv(items, tmp_path / "sudoku.csv")
    task = get_task("sudoku")
    rows = task.load_train(path)
    references = [task.reference_completion(row) for row in rows]
    assert references[0] == format_sft_example(items[0], trace="none")["completion"]
    assert references[0] == f"<reasoning>\n</reasoning>\n<answer>\n{items[0]['solution']}\n</answer>"
    assert default_rewards("sudoku", rows, references) == [[1.0, 1.0]] * 4
    for row, reference in zip(rows, references, strict=True):
        assert task.parse(reference, row["solution"], task.eval_item(row)["question"]).correct


def test_gsm8k_reference_is_the_worked_solution_with_the_most_reward(tmp_path: Path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    task = get_task("gsm8k")
    rows = task.load_train(path)
    references = [task.reference_completion(row) for row in rows]
    assert references[0] == (
        "<reasoning>\nNatalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April "
        "and May.\n</reasoning>\n<answer>\n72\n</answer>\n"
    )
    # xmlcount 0.5 (its maximum), soft format 0, strict format 0.5, integer 0.5, correctness 2.0
    assert default_rewards("gsm8k", rows, references) == [[0.5, 0.0, 0.5, 0.5, 2.0]] * 2
    # the soft format wants "<reasoning>...</reasoning>" on the first line, the strict one "<reasoning>\n":
    assert not soft_format_ok("<reasoning>\n") and soft_format_ok("<reasoning>x</reasoning><answer>1</answer>")
    assert task.parse(references[0], 72.0).correct
    assert "reasoning" not in task.eval_item(rows[0])


def test_tasks_without_a_reference_say_none():
    assert get_task("countdown").reference_completion({"numbers": [1, 2], "target": 3}) is None
