"""Hostile model output: every task parser and reward handles 1 MB of adversarial text in seconds (linear time).

Each payload family targets a scan that used to backtrack quadratically (unclosed tags and boxes, long
runs before a missing ``=``, overlapping code fences) or could blow up in evaluation (nested braces,
power towers, huge integers). One call per payload, each timed on its own; run this file directly
(``python tests/tasks/test_hostile_text.py``) to print the timing table.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from d1.tasks import TASKS
from d1.tasks.base import first_tag_content, last_tag_content
from d1.tasks.code import CodeTask, code_format_score, continuation_code, extract_fenced_code
from d1.tasks.code_protocols import begin_done_code, first_fenced_or_text
from d1.tasks.countdown import drop_result_tail
from d1.tasks.gsm8k import boxed_contents, parse_gsm8k_answer, soft_format_ok
from d1.tasks.latex import extract_boxed_answer, last_boxed_only_string
from d1.tasks.sudoku import extract_sudoku_solution, sudoku_question

SIZE = 1_000_000
LIMIT_S = 5.0  # a quadratic scan of 1 MB takes minutes; linear ones take well under 1 s, also on a loaded machine

PUZZLE, SOLUTION = "0300040000203000", "1342241342313124"

PAYLOAD_UNITS: dict[str, tuple[str, str]] = {
    # family: (prefix, unit repeated to SIZE characters)
    "unclosed_boxed": ("", "\\boxed{"),
    "unclosed_boxed_digits": ("", "\\boxed{1"),
    "boxed_space": ("", "\\boxed 1"),
    "unclosed_answer": ("", "<answer>"),
    "unclosed_answer_digits": ("", "<answer>1234567890123456 "),
    "closing_answer": ("", "</answer>"),
    "answer_pairs": ("", "<answer>1+2</answer>"),
    "equals_signs": ("\\boxed{", "1+2="),
    "expression_no_equals": ("\\boxed{", "1+2*"),
    "expression_then_equals": ("<answer>", "(1 + 2) "),
    "digit_run": ("<answer>", "1"),
    "spaces": ("<answer>```", " "),
    "newlines": ("<reasoning>", "\n"),
    "nested_braces": ("\\boxed{", "{"),
    "nested_frac": ("\\boxed{", "\\frac{1}{"),
    "closing_braces": ("\\boxed{", "}"),
    "power_tower": ("<answer>", "9**"),
    "reasoning_tags": ("", "<reasoning>"),
    "soft_format_chain": ("<reasoning>", "</reasoning><answer>"),
    "strict_format_lines": ("<reasoning>\n", "x\n</reasoning>\n<answer>\n"),
    "code_fences": ("<answer>", "```"),
    "fence_digits": ("<answer>", "```1 2 3 4 "),
    "sudoku_runs": ("", "12341234123412341 "),
    "frac_sqrt_noise": ("\\boxed{", "\\frac\\sqrt/"),
    "nul_unicode": ("", "\x00\u202e\U0001f600\u0663\u00a0\ufeff<\u0300"),
    "lone_surrogates": ("\\boxed{", "\ud800{\udfff}"),
}


def payload(family: str, size: int = SIZE) -> str:
    """``size`` characters of one family: its prefix, then its unit repeated."""
    prefix, unit = PAYLOAD_UNITS[family]
    return prefix + unit * ((size - len(prefix)) // len(unit) + 1)


def _columns(task_name: str) -> dict[str, list[Any]]:
    """The reward-function columns of one row, as the trainer passes them."""
    return {
        "gsm8k": {"answer": ["18"]},
        "math500": {"answer": ["so \\boxed{\\frac{1}{2}}"]},
        "countdown": {"numbers": [[1, 2, 3]], "target": [6]},
        "sudoku": {"puzzle": [PUZZLE], "solution": [SOLUTION]},
    }[task_name]


_GROUND_TRUTH = {"gsm8k": 18.0, "math500": "\\frac{1}{2}", "countdown": [[1, 2, 3], 6], "sudoku": SOLUTION}


def calls() -> dict[str, Callable[[str], Any]]:
    """Every parser and reward of every registered task (plus the shared extraction helpers), by name."""
    out: dict[str, Callable[[str], Any]] = {
        "gsm8k.parse_gsm8k_answer": parse_gsm8k_answer,
        "latex.last_boxed_only_string": last_boxed_only_string,
        "latex.extract_boxed_answer": extract_boxed_answer,
        "sudoku.extract_sudoku_solution": extract_sudoku_solution,
        "code.extract_fenced_code": extract_fenced_code,
        "code.continuation_code": lambda text: continuation_code("def f():\n", text),
        "code.code_format_score": code_format_score,
        "code_protocols.first_fenced_or_text": first_fenced_or_text,
        "code_protocols.begin_done_code": begin_done_code,
    }
    question = {"sudoku": sudoku_question(PUZZLE)}
    for name, task in TASKS.items():
        if isinstance(task, CodeTask):  # its parse and code reward run the text in the sandbox; extraction is above
            continue
        truth, q = _GROUND_TRUTH[name], question.get(name, "")
        out[f"{name}.parse"] = lambda text, task=task, truth=truth, q=q: task.parse(text, truth, q)
        for func in task.reward_funcs:
            columns = _columns(name)
            out[f"{name}.{func.__name__}"] = lambda text, func=func, columns=columns: func(
                prompts=[[{"role": "user", "content": "q"}]], completions=[[{"content": text}]], **columns
            )
    return out


def timing_table(size: int = SIZE) -> dict[tuple[str, str], float]:
    """Seconds per (payload family, call)."""
    table = {}
    for family in PAYLOAD_UNITS:
        text = payload(family, size)
        for name, call in calls().items():
            start = time.perf_counter()
            call(text)
            table[family, name] = time.perf_counter() - start
    return table


@pytest.mark.parametrize("family", list(PAYLOAD_UNITS))
def test_every_parser_and_reward_is_fast_on_1mb(family: str) -> None:
    text = payload(family)
    assert len(text) >= SIZE
    slow = {}
    for name, call in calls().items():
        start = time.perf_counter()
        call(text)
        elapsed = time.perf_counter() - start
        if elapsed >= LIMIT_S:
            slow[name] = round(elapsed, 2)
    assert not slow, f"{family}: calls over {LIMIT_S} s on {len(text)} characters: {slow}"


# The regexes d1 uses, as the oracle for the single-pass scanners on short text (where they are fast).
_D1_SUDOKU = [
    r"<answer>.*?```\s*([\d\s]+)```",
    r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
    r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
    r".*?(\d{16})\s*</answer>",
    r"\b(\d{16})\b",
]
_PIECES = ["<answer>", "</answer>", "<reasoning>", "</reasoning>", "\\boxed{", "{", "}", "\n", " ", "\t", "```",
           "`", "1", "12", "1234123412341234", "=", "+", "(", "a", ".", "<|eot_id|>", "<|endoftext|>", "\u00a0"]


def _d1_sudoku(text: str) -> str:
    for pattern in _D1_SUDOKU:
        match = re.search(pattern, text, re.DOTALL)
        if match and match.group(1).strip():
            return re.sub(r"\s", "", match.group(1).strip())
    return ""


def _d1_result_tail(equation: str) -> str:
    match = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", equation)
    return match.group(1).strip() if match else equation


def test_scanners_agree_with_d1_regexes_on_short_text() -> None:
    rng = random.Random(0)
    corner_cases = [
        "<answer>```  ```",  # an all-space run: the regex gives back one space, which strips to nothing
        "<answer>``` x```1 2```",
        "<answer>`````1 2```",
        "<reasoning>a</reasoning>\n <answer>b</answer>",
        "<reasoning>a</reasoning><answer>b\n</reasoning><answer>c</answer>",
        "12345678901234567 </answer>",
        "1 + 2 =x 3 = 4",
    ]
    heads = ["", "<reasoning>", "<reasoning>\n", "<answer>"]
    random_texts = (
        rng.choice(heads) + "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 24))) for _ in range(4000)
    )
    for text in [*corner_cases, *random_texts]:
        tag = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
        assert first_tag_content(text, "<answer>", ["</answer>"]) == (tag.group(1) if tag else None), text
        tags = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        assert last_tag_content(text, "<answer>", "</answer>") == (tags[-1] if tags else None), text
        assert list(boxed_contents(text)) == re.findall(r"\\boxed{(.*?)}", text), text
        soft = re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text)
        assert soft_format_ok(text) is bool(soft), text
        assert extract_sudoku_solution(text) == _d1_sudoku(text), text
        assert drop_result_tail(text) == _d1_result_tail(text), text


if __name__ == "__main__":
    import sys

    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    table = timing_table(size)
    worst: dict[str, tuple[float, str]] = {}
    for (family, name), seconds in table.items():
        if seconds > worst.get(name, (-1.0, ""))[0]:
            worst[name] = (seconds, family)
    print(f"{'call':<50} {'worst ms':>9}  worst payload ({size} chars)")
    for name, (seconds, family) in sorted(worst.items()):
        print(f"{name:<50} {1000 * seconds:>9.1f}  {family}")
    print(f"total {sum(table.values()):.2f} s over {len(table)} calls")
