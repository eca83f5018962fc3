"""Countdown: d1's eval prompt, expression parsing/checking (no ``eval``) and the RL reward."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from d1.tasks.arithmetic import evaluate_expression, hits_target, uses_numbers_exactly
from d1.tasks.base import (
    FORMAT_ONLY_SYSTEM_PROMPT,
    ParsedAnswer,
    Task,
    completion_texts,
    first_tag_content,
    last_tag_content,
    load_hub_split,
    read_records,
)
from d1.tasks.latex import last_boxed_only_string, remove_boxed

SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
    "be used exactly once. Think step-by-step. After reasoning, provide only your final expression "
    "inside \\boxed{} tags without including an equals sign or the target number. "
    "For example: \\boxed{a + b * c}"
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)
"""d1's ``CTD_SYSTEM_PROMPT`` (eval); note the missing space before "Respond"."""

TRAIN_HUB_NAME = "Jiayi-Pan/Countdown-Tasks-3to4"

# d1 drops an "= result" tail with re.search(r"([0-9+\-*/() ]+)=[0-9. ]+"): the first run of expression
# characters followed by "=" and a digit, dot or space. Matching runs once each keeps that linear.
_EXPRESSION_RUN = re.compile(r"[0-9+\-*/() ]+")
_RESULT_START = frozenset("0123456789. ")
_QUESTION_NUMBERS = re.compile(r"Numbers: \[([\d, ]+)\]", re.IGNORECASE)
_QUESTION_TARGET = re.compile(r"Target: (\d+)", re.IGNORECASE)

FORMAT_SCORE = 0.1
CORRECT_SCORE = 1.0


def countdown_question(numbers: list[int], target: int) -> str:
    """The eval question text d1 builds from one test row."""
    return f"Numbers: {numbers}\nTarget: {target}"


def train_prompt_content(numbers: list[int], target: int) -> str:
    """User message of d1's RL prompt for one Countdown problem (``get_countdown_questions``)."""
    return (
        f"{FORMAT_ONLY_SYSTEM_PROMPT}\nUsing only the numbers {numbers}, create an arithmetic expression that "
        f"evaluates to exactly {target}. You must use all numbers from the list, and each number must be used "
        "exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your "
        "final expression inside <answer></answer> tags without including an equals sign or the target number. "
        "For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
    )


def extract_countdown_equation(text: str) -> str:
    r"""d1's eval extraction: last ``\boxed{}`` (whole text if none; ``<answer>`` if the box is unclosed),
    LaTeX operators mapped to Python, and an ``= result`` tail dropped."""
    boxed = last_boxed_only_string(text)
    try:
        equation = remove_boxed(boxed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        answer = first_tag_content(text, "<answer>", ["</answer>"])
        equation = answer.strip() if answer is not None else text
    equation = equation.replace(r"\div", "/").replace(r"\times", "*").replace(r"\cdot", "*")
    return drop_result_tail(equation)


def drop_result_tail(equation: str) -> str:
    """d1's ``= result`` removal: the first expression run followed by ``=`` and a digit, dot or space."""
    for run in _EXPRESSION_RUN.finditer(equation):
        end = run.end()
        if equation[end : end + 1] == "=" and equation[end + 1 : end + 2] in _RESULT_START:
            return run.group().strip()
    return equation


def _numbers_and_target(ground_truth: Any, question: str) -> tuple[list[int], int | None]:
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 2:
        numbers, target = ground_truth
        if not isinstance(numbers, (list, tuple)) or not isinstance(target, (int, float)):
            raise ValueError(f"ground_truth must be [[numbers], target], not {ground_truth!r:.80}")
        return list(numbers), target
    numbers_match = _QUESTION_NUMBERS.search(question)
    target_match = _QUESTION_TARGET.search(question)
    numbers = [int(n.strip()) for n in numbers_match.group(1).split(",")] if numbers_match else []
    return numbers, int(target_match.group(1)) if target_match else None


def _score_equation(equation: str | None, numbers: list[int], target: int | float) -> float:
    """d1's RL score of an extracted equation: 1.0 correct, 0.1 wrong or invalid, 0.0 for none."""
    if equation is None:
        return 0.0
    if not uses_numbers_exactly(equation, numbers):
        return FORMAT_SCORE
    return CORRECT_SCORE if hits_target(evaluate_expression(equation), target) else FORMAT_SCORE


def compute_score(text: str, numbers: list[int], target: int | float) -> float:
    """d1's RL score: 1.0 correct, 0.1 for an ``<answer>`` that is wrong or invalid, 0.0 without one.

    The last ``<answer>`` must hold a plain expression (d1's training prompt asks for one).
    """
    answer = last_tag_content(text, "<answer>", "</answer>")
    return _score_equation(None if answer is None else answer.strip(), numbers, target)


def compute_aligned_score(text: str, numbers: list[int], target: int | float) -> float:
    r""":func:`compute_score` with the last ``<answer>`` read as d1's evaluation reads a generation.

    Its last ``\boxed{}`` if any (d1's eval prompt asks for ``<answer>\n\boxed{...}\n</answer>``), LaTeX
    operators mapped and an ``= result`` tail dropped, so a rollout is rewarded in the form the evaluation
    (and checkpoint selection) accepts. Not in d1: select it with ``reward_funcs``.
    """
    answer = last_tag_content(text, "<answer>", "</answer>")
    equation = None if answer is None else extract_countdown_equation(answer.strip())
    return _score_equation(equation, numbers, target)


def countdown_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """Per-completion :func:`compute_score`; needs ``target`` and ``numbers`` columns in ``kwargs``."""
    texts = completion_texts(completions)
    return [compute_score(text, kwargs["numbers"][i], kwargs["target"][i]) for i, text in enumerate(texts)]


def countdown_aligned_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """Per-completion :func:`compute_aligned_score` (weight 0 by default: logged beside d1's reward)."""
    texts = completion_texts(completions)
    return [
        compute_aligned_score(text, kwargs["numbers"][i], kwargs["target"][i]) for i, text in enumerate(texts)
    ]


def _row_numbers_target(row: dict[str, Any], source: str, index: int) -> tuple[list[int], int]:
    try:
        if "input" in row and "output" in row:  # d1's countdown_cd3_test.jsonl
            return [int(n) for n in str(row["input"]).split(",")], int(row["output"])
        if "nums" in row and "target" in row:  # Jiayi-Pan/Countdown-Tasks-3to4
            nums = row["nums"]
            nums = json.loads(nums) if isinstance(nums, str) else nums
            return [int(n) for n in nums], int(row["target"])
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{source}: row {index} is not a Countdown problem of whole numbers ({err}): {row!r:.200}. "
            'd1\'s format is {"input": "3,5,7", "output": "15"}; fix or remove the row.'
        ) from None
    raise ValueError(f"{source}: row {index} needs 'input'/'output' or 'nums'/'target'")


class CountdownTask(Task):
    """Reach a target with + - * / using each given number once (d1: 3 numbers)."""

    name = "countdown"
    system_prompt = SYSTEM_PROMPT
    default_subsample = 256
    train_holdout = 500
    few_shot_supported = False  # d1 forces num_examples=0 for Countdown
    reward_funcs = [countdown_reward_func, countdown_aligned_reward_func]
    default_reward_weights = [1.0, 0.0]

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        if path is None:
            raise ValueError("countdown: d1's test set is a local file; pass countdown_cd3_test.jsonl")
        items = []
        for i, row in enumerate(read_records(path)):
            numbers, target = _row_numbers_target(row, str(path), i)
            items.append({"question": countdown_question(numbers, target), "ground_truth": [numbers, target]})
        return items

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        source = str(path) if path is not None else TRAIN_HUB_NAME
        rows = read_records(path) if path is not None else load_hub_split(TRAIN_HUB_NAME, None, "train")
        out = []
        for i, row in enumerate(rows):
            numbers, target = _row_numbers_target(row, source, i)
            if len(numbers) != 3:  # d1 trains on the three-number problems only
                continue
            content = train_prompt_content(numbers, target)
            out.append(
                {"prompt": [{"role": "user", "content": content}], "target": target, "numbers": numbers}
            )
        return out

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        numbers, target = list(train_row["numbers"]), train_row["target"]
        return {"question": countdown_question(numbers, target), "ground_truth": [numbers, target]}

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """d1's Countdown verdict: numbers used exactly once and the value within 1e-5 of the target."""
        numbers, target = _numbers_and_target(ground_truth, question)
        equation = extract_countdown_equation(text)
        value = evaluate_expression(equation) if uses_numbers_exactly(equation, numbers) else None
        correct = hits_target(value, target)
        return ParsedAnswer(
            extracted=equation, correct=correct, n_correct=int(correct), details={"value": value}
        )


TASK = CountdownTask()
