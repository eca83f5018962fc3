"""MBPP, sanitized (Austin et al. 2021; the hand-checked 427-problem version): a one-line task plus assert
tests, graded by running the solution and the asserts in d1's sandbox. Data: the Hub set
`google-research-datasets/mbpp` (config `sanitized`, split test) or a local file with its columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d1.tasks.base import load_hub_split, read_records
from d1.tasks.code import (
    CODE_REWARD_FUNCS,
    CODE_REWARD_WEIGHTS,
    CodeTask,
    assert_program,
    checked_tests,
    extract_fenced_code,
    string_list,
)

HUB_NAME = "google-research-datasets/mbpp"
HUB_CONFIG = "sanitized"
TESTS_INTRO = " Your code should pass these tests:\n\n"

SYSTEM_PROMPT = "Write a Python function for the task below. Put the code in one ```python code block."
"""This project's default (protocol d1) instruction; the published ones: `d1.tasks.code_protocols`."""


def mbpp_question(text: str, tests: list[str]) -> str:
    """The task text then its tests, as LLaDA's and Dream's MBPP prompts show them."""
    return text + TESTS_INTRO + "\n".join(tests)


def mbpp_rows(path: str | Path | None) -> list[dict[str, Any]]:
    """Test items from `path` or the Hub: ``prompt`` (sanitized) or ``text`` (full MBPP), ``test_list``,
    ``test_imports``; a row without parseable tests is refused naming the file and row."""
    source = str(path) if path is not None else f"{HUB_NAME} ({HUB_CONFIG})"
    rows = read_records(path) if path is not None else load_hub_split(HUB_NAME, HUB_CONFIG, "test")
    items = []
    for index, row in enumerate(rows):
        text = row.get("prompt", row.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: row {index} needs the task text in column 'prompt' (or 'text').")
        tests = checked_tests(row.get("test_list"), source, index, "test_list")
        truth = {
            "task_id": row.get("task_id"),
            "tests": tests,
            "test_imports": string_list(row.get("test_imports")),
        }
        items.append({"question": mbpp_question(text, tests), "ground_truth": truth})
    return items


class MBPPTask(CodeTask):
    """MBPP (sanitized): the test imports, the solution, then the problem's asserts."""

    name = "mbpp"
    system_prompt = SYSTEM_PROMPT
    reward_funcs = CODE_REWARD_FUNCS
    default_reward_weights = CODE_REWARD_WEIGHTS
    source = "d1 project default: chat, instruction + task and tests, the answer's ```python block"

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return mbpp_rows(path)

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        raise ValueError("mbpp here is its test split; train on AceCode rows (--dataset acecode) instead.")

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        """The answer's ```python block (None without one)."""
        return extract_fenced_code(text)

    def test_program(self, code: str, ground_truth: dict[str, Any]) -> str:
        return assert_program(code, ground_truth["tests"], ground_truth.get("test_imports", ()))


TASK = MBPPTask()
