"""GSM8K: d1's eval prompt, answer parsing and the five diffu-GRPO rewards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from d1.tasks.base import (
    FORMAT_ONLY_SYSTEM_PROMPT,
    ParsedAnswer,
    Task,
    completion_texts,
    first_tag_content,
    format_completion,
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

_BOXED = "\\boxed{"
_NUMBER = re.compile(r"-?\d+\.?\d*")
_HASH_NUMBER = re.compile(r"####\s*\$?([\d,]+(?:\.\d+)?)")
# d1's format patterns, used with re.match and no flags: "." stops at a newline, so multi-line reasoning
# fails both. The strict one is linear as a regex (each ".*?" spans one line); the soft one is not.
_STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_WHITESPACE = re.compile(r"\s*")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def gsm8k_ground_truth(solution: str) -> float | None:
    """Eval ground truth: the number after ``####`` as a float (commas dropped; negatives give None, as in d1)."""
    match = _HASH_NUMBER.search(solution)
    return float(match.group(1).replace(",", "")) if match else None


def extract_hash_answer(solution: str) -> str | None:
    """RL ground truth: the raw text after ``####``, stripped (``None`` without ``####``)."""
    return solution.split("####")[1].strip() if "####" in solution else None


def worked_reasoning(solution: str) -> str:
    """The dataset's worked solution before ``####`` on one line, calculator annotations (``<<48/2=24>>``)
    removed: d1's strict format reward accepts only one-line reasoning."""
    steps = _CALCULATOR.sub("", solution.split("####")[0]).split("\n")
    return " ".join(step.strip() for step in steps if step.strip())


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


def _line_end(text: str, pos: int) -> int:
    """Index of the first newline at or after ``pos`` (``len(text)`` if none)."""
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def boxed_contents(text: str) -> Iterator[str]:
    r"""``re.findall(r"\boxed{(.*?)}", text)`` lazily in one pass: content up to the first ``}`` on the same line.

    The regex rescans to the line end from every unclosed ``\boxed{``; here the next ``}`` and the next
    newline are found once and reused until the scan passes them.
    """
    pos, close, newline = 0, -1, -1
    while (start := text.find(_BOXED, pos)) >= 0:
        body = start + len(_BOXED)
        if close < body:
            close = text.find("}", body)
            if close < 0:
                return
        if newline < body:
            newline = _line_end(text, body)
        if close < newline:
            yield text[body:close]
            pos = close + 1
        else:
            pos = start + 1


def parse_gsm8k_answer(text: str) -> float | None:
    r"""First usable ``\boxed{...}`` (lazy match, so nested braces cut early), else last number in ``<answer>``."""
    for content in boxed_contents(text):
        content = content.strip()
        if content and not re.fullmatch(r"\.+", content):
            value = _as_number(content, pick_last=False)
            if value is not None:
                return value
    answer = (first_tag_content(text, "<answer>", ["</answer>"]) or "").strip()
    return _as_number(answer, pick_last=True) if answer else None


def soft_format_ok(text: str) -> bool:
    r"""d1's ``re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text)`` (no flags) in one pass.

    Candidates are the ``</reasoning>`` tags on the first line; the regex scans the rest of a line for
    ``</answer>`` once per candidate, here the last ``</answer>`` of each line is looked up once.
    """
    if not text.startswith("<reasoning>"):
        return False
    first_line_end = _line_end(text, len("<reasoning>"))
    last_close: dict[int, int] = {}  # line end -> last "</answer>" ending before it
    pos = len("<reasoning>")
    while (close := text.find("</reasoning>", pos, first_line_end)) >= 0:
        answer = _WHITESPACE.match(text, close + len("</reasoning>")).end()
        if text.startswith("<answer>", answer):
            body = answer + len("<answer>")
            line_end = first_line_end if body <= first_line_end else _line_end(text, body)
            if line_end not in last_close:
                last_close[line_end] = text.rfind("</answer>", 0, line_end)
            if last_close[line_end] >= body:
                return True
        pos = close + 1
    return False


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
    """0.5 when the completion starts with ``<reasoning>…</reasoning>`` then ``<answer>…</answer>``, each tag's
    content on one line (d1's pattern has no ``re.DOTALL``)."""
    return [0.5 if soft_format_ok(text) else 0.0 for text in completion_texts(completions)]


def strict_format_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.5 when the completion is exactly the newline-delimited layout with one-line reasoning and answer."""
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
                "reasoning": worked_reasoning(str(row["answer"])),
            }
            for row in self._raw_rows(path, "train")
        ]

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        return {"question": train_row["question"], "ground_truth": train_row["answer"]}

    def reference_completion(self, train_row: dict[str, Any]) -> str | None:
        """The worked solution and its ``####`` answer in the layout that earns every reward but the soft
        format's (which wants the tags' contents on the tags' lines, so no completion earns both format
        rewards): 3.5 of 4.0, the most any completion gets."""
        return format_completion([train_row["reasoning"]], train_row["answer"]) + "\n"

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
