"""MATH500: d1's eval prompt, boxed-answer parsing with MATH normalisation, and the RL rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d1.tasks.base import (
    FORMAT_ONLY_SYSTEM_PROMPT,
    ParsedAnswer,
    Task,
    completion_texts,
    first_tag_content,
    load_hub_split,
    read_records,
)
from d1.tasks.latex import extract_boxed_answer, is_equiv

SYSTEM_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}.\n"
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n"
    '<answer>\n\\boxed{...}\n</answer>" \n'  # the stray quote and trailing space are d1's
)
"""d1's ``MATH500_SYSTEM_PROMPT`` (eval)."""

TRAIN_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}. "
)
"""Instruction d1's ``get_math_questions`` puts between the format prompt and the problem."""

TEST_HUB_NAME = "HuggingFaceH4/MATH-500"
TRAIN_HUB_NAME = "ankner/math-500"

# d1 writes "\boxed" in a non-raw string, i.e. backspace + "oxed"; the check therefore (almost) never
# fires and boxed_in_answer gives 0.5 for the box part. Kept so RL rewards equal d1's.
_D1_BOXED_NEEDLE = "\boxed"


def parse_math_answer(text: str) -> str | None:
    r"""d1's MATH500 extraction: last ``\boxed{}`` content (the whole text if none), else ``<answer>`` text."""
    parsed = extract_boxed_answer(text)
    if not parsed:
        answer = first_tag_content(text, "<answer>", ["</answer>"])
        if answer is not None:
            parsed = answer.strip()
    return parsed


def boxed_in_answer(completions: list[Any]) -> list[float]:
    """d1's ``boxed_in_answer`` score: 1 for an ``<answer>`` tag, plus 1 or 0.5 for the (buggy) box check."""
    scores = []
    for text in completion_texts(completions):
        score = 0.0
        if "<answer>" in text:
            text = text.split("<answer>")[1].split("</answer>")[0]
            score += 1.0
        score += 1.0 if _D1_BOXED_NEEDLE in text else 0.5
        scores.append(score)
    return scores


def correctness_reward_func_math(
    prompts: list[Any], completions: list[Any], answer: list[str], **kwargs: Any
) -> list[float]:
    r"""2.0 when the completion's last ``\boxed{}`` (whole text if none) is ``is_equiv`` to the solution's."""
    golds = [extract_boxed_answer(solution) for solution in answer]
    rewards = []
    for text, gold in zip(completion_texts(completions), golds, strict=True):
        extracted = extract_boxed_answer(text)
        rewards.append(
            2.0 if gold is not None and is_equiv(text if extracted is None else extracted, gold) else 0.0
        )
    return rewards


def boxed_and_answer_tags_format_reward(
    prompts: list[Any], completions: list[Any], answer: list[str] | None = None, **kwargs: Any
) -> list[float]:
    """Half of :func:`boxed_in_answer`: 0.75 with an ``<answer>`` tag, 0.25 without (as d1 computes it)."""
    return [0.5 * score for score in boxed_in_answer(completions)]


class Math500Task(Task):
    """Competition math (MATH500 test set; RL on ``ankner/math-500`` train)."""

    name = "math500"
    aliases = ("math",)
    system_prompt = SYSTEM_PROMPT
    default_subsample = -1
    reward_funcs = [correctness_reward_func_math, boxed_and_answer_tags_format_reward]
    default_reward_weights = [1.0, 1.0]

    @staticmethod
    def _raw_rows(path: str | Path | None, hub_name: str, split: str, columns: tuple[str, str]) -> list[dict]:
        rows = read_records(path) if path is not None else load_hub_split(hub_name, None, split)
        for i, row in enumerate(rows):
            if any(column not in row for column in columns):
                raise ValueError(f"{path or hub_name}: row {i} needs columns {columns}")
        return rows

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        rows = self._raw_rows(path, TEST_HUB_NAME, "test", ("problem", "answer"))
        return [{"question": row["problem"], "ground_truth": row["answer"]} for row in rows]

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        rows = self._raw_rows(path, TRAIN_HUB_NAME, "train", ("problem", "solution"))
        return [
            {
                "problem": row["problem"],
                "prompt": [
                    {
                        "role": "user",
                        "content": f"{FORMAT_ONLY_SYSTEM_PROMPT}\n\n{TRAIN_INSTRUCTION}\n\n{row['problem']}",
                    }
                ],
                "answer": row["solution"],
            }
            for row in rows
        ]

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        return {"question": train_row["problem"], "ground_truth": extract_boxed_answer(train_row["answer"])}

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """d1's MATH500 verdict: ``is_equiv`` of the extracted answer and the reference answer."""
        extracted = parse_math_answer(text)
        correct = extracted is not None and is_equiv(extracted, ground_truth)
        return ParsedAnswer(extracted=extracted, correct=correct, n_correct=int(correct))


TASK = Math500Task()
