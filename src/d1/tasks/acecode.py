"""AceCode (Zeng et al. 2025, `TIGER-Lab/AceCode-87K`): coding questions with assert tests, the RL data of
DiffuCoder's coupled-GRPO (its AceCode-hard subset, `recipes/process_data.py` of apple/ml-diffucoder, is a
local JSONL of the same columns). Rows are ``{"question", "test_cases": [assert, ...]}``; every row is checked
(tests present and parseable by ``ast.parse``) before any is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d1.tasks.code import (
    ACECODE_HUB,
    CODE_REWARD_FUNCS,
    CODE_REWARD_WEIGHTS,
    DIFFUCODER_SYSTEM_PROMPT,
    CodeTask,
    acecode_rows,
    assert_program,
    extract_fenced_code,
)


class AceCodeTask(CodeTask):
    """Questions with assert tests: RL rows in DiffuCoder's layout (system prompt + question), rewarded by
    DiffuCoder's code and code-format rewards; held-out rows graded all-or-nothing on their tests."""

    name = "acecode"
    hub_name = ACECODE_HUB
    system_prompt = ""
    train_holdout = 0
    reward_funcs = CODE_REWARD_FUNCS
    default_reward_weights = CODE_REWARD_WEIGHTS
    source = "DiffuCoder coupled-GRPO (apple/ml-diffucoder): system prompt + question, ```python block"

    def _rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return acecode_rows(path, self.hub_name)

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [self.eval_item(row) for row in self._rows(path)]

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [{**row, "prompt": self.train_messages(row["question"])} for row in self._rows(path)]

    def train_messages(self, question: str) -> list[dict[str, str]]:
        """DiffuCoder's RL prompt: its system prompt, then the question as the user turn."""
        return [
            {"role": "system", "content": DIFFUCODER_SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        return {"question": train_row["question"], "ground_truth": {"tests": list(train_row["test_cases"])}}

    def reference_completion(self, train_row: dict[str, Any]) -> str | None:
        """The row's solution (when the file has one) as a ```python answer: full code and format rewards."""
        solution = train_row.get("solution")
        return (
            f"```python\n{solution.strip()}\n```\n"
            if isinstance(solution, str) and solution.strip()
            else None
        )

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        """The answer's ```python block (None without one)."""
        return extract_fenced_code(text)

    def test_program(self, code: str, ground_truth: dict[str, Any]) -> str:
        return assert_program(code, ground_truth["tests"])


TASK = AceCodeTask()
