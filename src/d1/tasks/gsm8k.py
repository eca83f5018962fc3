"""GSM8K: d1's eval prompt, answer parsing and the five diffu-GRPO rewards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from d1.tasks.base import (
    FORMAT_ONLY_SYSTEM_PROMPT,
    ParsedAnswer,
    Task,
    completion_texts,
    load_hub_split,
    read_records,
)

SYSTEM_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}. \n"  # d1 has a trailing space before this newline
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)
"""d1's ``GSM_SYSTEM_PROMPT`` (eval)."""

HUB_NAME, HUB_CONFIG = "openai/gsm8k", "main"

_BOXED_LAZY = re.compile(r"\\boxed{(.*?)}")
_NUMBER = re.compile(r"-?\d+\.?\d*")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_HASH_NUMBER = re.compile(r"####\s*\$?([\d,]+(?:\.\d+)?)")
_STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
_SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)


def gsm8k_ground_truth(solution: str) -> float | None:
    """Eval ground truth: the number after ``####`` as a float (commas dropped; negatives give None, as in d1)."""
    match = _HASH_NUMBER.search(solution)
    return float(match.group(1).replace(",", "")) if match else None


def extract_hash_answer(solution: str) -> str | None:
    """RL ground truth: the raw text after ``####``, stripped (``None`` without ``####``)."""
    return solution.split("####")[1].strip() if "####" in solution else None


def extract_xml_answer(text: str) -> str:
    """Text between the last ``<answer>`` and the following ``</answer>`` (d1's RL extraction)."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def _as_number(text: str, pick_last: bool) -> float | None:
    try:
        return float(text)
    except ValueError:
        numbers = _NUMBER.findall(text)
        if not numbers:
            return None
        return float(numbers[-1] if pick_last else numbers[0])


def parse_gsm8k_answer(text: str) -> float | None:
    r"""First usable ``\boxed{...}`` (lazy match, so nested braces cut early), else last number in ``<answer>``."""
    for content in _BOXED_LAZY.findall(text):
        content = content.strip()
        if content and not re.fullmatch(r"\.+", content):
            value = _as_number(content, pick_last=False)
            if value is not None:
                return value
    match = _ANSWER_TAG.search(text)
    if match and match.group(1).strip():
        return _as_number(match.group(1).strip(), pick_last=True)
    return None


def count_xml(text: str) -> float:
    """Will Brown's XML-tag count reward: 0.125 per well-placed tag, minus trailing-text penalties."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def xmlcount_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """Reward per completion: :func:`count_xml`."""
    return [count_xml(text) for text in completion_texts(completions)]


def soft_format_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.5 when the completion starts with ``<reasoning>…</reasoning>`` followed by ``<answer>…</answer>``."""
    return [0.5 if _SOFT_FORMAT.match(text) else 0.0 for text in completion_texts(completions)]


def strict_format_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.5 when the completion is exactly the newline-delimited reasoning/answer layout."""
    return [0.5 if _STRICT_FORMAT.match(text) else 0.0 for text in completion_texts(completions)]


def int_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.5 when the ``<answer>`` text is all digits (``str.isdigit``)."""
    return [0.5 if extract_xml_answer(text).isdigit() else 0.0 for text in completion_texts(completions)]


def correctness_reward_func(
    prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
) -> list[float]:
    """2.0 when the ``<answer>`` text equals the ``####`` answer string exactly, else 0.0."""
    texts = completion_texts(completions)
    return [
        2.0 if extract_xml_answer(text) == gold else 0.0 for text, gold in zip(texts, answer, strict=True)
    ]


class GSM8KTask(Task):
    """Grade-school math word problems (``openai/gsm8k``, config ``main``)."""

    name = "gsm8k"
    system_prompt = SYSTEM_PROMPT
    default_subsample = -1
    reward_funcs = [
        xmlcount_reward_func,
        soft_format_reward_func,
        strict_format_reward_func,
        int_reward_func,
        correctness_reward_func,
    ]
    default_reward_weights = [1.0] * 5

    @staticmethod
    def _raw_rows(path: str | Path | None, split: str) -> list[dict[str, Any]]:
        rows = read_records(path) if path is not None else load_hub_split(HUB_NAME, HUB_CONFIG, split)
        for i, row in enumerate(rows):
            if "question" not in row or "answer" not in row:
                raise ValueError(f"{path or HUB_NAME}: row {i} needs 'question' and 'answer' columns")
        return rows

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [
            {"question": row["question"], "ground_truth": gsm8k_ground_truth(str(row["answer"]))}
            for row in self._raw_rows(path, "test")
        ]

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        return [
            {
                "question": row["question"],
                "prompt": [{"role": "user", "content": FORMAT_ONLY_SYSTEM_PROMPT + "\n\n" + row["question"]}],
                "answer": extract_hash_answer(str(row["answer"])),
            }
            for row in self._raw_rows(path, "train")
        ]

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        return {"question": train_row["question"], "ground_truth": train_row["answer"]}

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """d1's GSM8K verdict: the parsed float equals the ground truth exactly."""
        value = parse_gsm8k_answer(text)
        if isinstance(ground_truth, str):  # d1 stores floats; accept a numeric string too
            try:
                ground_truth = float(ground_truth.replace(",", ""))
            except ValueError:
                ground_truth = None
        correct = value is not None and value == ground_truth
        return ParsedAnswer(extracted=value, correct=correct, n_correct=int(correct))


TASK = GSM8KTask()
