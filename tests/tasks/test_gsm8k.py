"""GSM8K: d1's parser verdicts, RL reward values and data loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.gsm8k import (
    SYSTEM_PROMPT,
    correctness_reward_func,
    count_xml,
    extract_hash_answer,
    gsm8k_ground_truth,
    int_reward_func,
    parse_gsm8k_answer,
    soft_format_reward_func,
    strict_format_reward_func,
    xmlcount_reward_func,
)
from tests.conftest import reference_path

TASK = get_task("gsm8k")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>\n\\boxed{18}\n</answer>", 18.0),
        ("\\boxed{ 18.5 }", 18.5),
        ("\\boxed{-7}", -7.0),
        ("\\boxed{\\frac{1}{2}}", 1.0),  # lazy match stops at the first "}", then the first number
        ("\\boxed{...} then \\boxed{$1,234}", 1.0),  # "..." skipped; "$1,234" -> first number "1"
        ("\\boxed{x} \\boxed{42}", 42.0),  # a box without numbers is skipped
        ("\\boxed{} <answer>7</answer>", 7.0),  # empty box: fall back to <answer>
        ("<answer>The total is 1,234 dollars, or 18</answer>", 18.0),  # last number in <answer>
        ("<answer>12</answer> and <answer>13</answer>", 12.0),  # first <answer> block
        ("<answer>\n\n</answer>", None),
        ("The answer is 18.", None),  # no tags, no box
        ("", None),
        ("\\boxed{1e3}", 1000.0),  # Python float() syntax is accepted as d1 does
        ("\\boxed{١٨}", 18.0),  # so are Unicode digits
        ("\\boxed{" + "9" * 400 + "}", float("inf")),
        ("\\boxed{18", None),  # unclosed: no match, no <answer>
    ],
)
def test_parse_answer(text: str, expected: float | None) -> None:
    assert parse_gsm8k_answer(text) == expected


def test_parse_verdicts() -> None:
    assert TASK.parse("<answer>\\boxed{18}</answer>", 18.0).correct
    assert TASK.parse("<answer>\\boxed{18.0}</answer>", 18.0).correct
    assert not TASK.parse("<answer>\\boxed{18.01}</answer>", 18.0).correct
    assert not TASK.parse("no answer", 18.0).correct
    assert not TASK.parse("\\boxed{nan}", float("nan")).correct
    assert TASK.parse("\\boxed{18}", "18").correct  # numeric-string truth accepted
    assert not TASK.parse("\\boxed{18}", None).correct  # d1's truth for negative answers
    parsed = TASK.parse("\\boxed{3}", 3.0)
    assert (parsed.extracted, parsed.n_correct, parsed.n_total) == (3.0, 1, 1)


def test_ground_truth_extraction() -> None:
    assert gsm8k_ground_truth("so 5 + 13 = 18\n#### 18") == 18.0
    assert gsm8k_ground_truth("#### $1,234.50") == 1234.5
    assert gsm8k_ground_truth("#### -3") is None  # d1's regex has no sign
    assert extract_hash_answer("steps\n#### 1,234 ") == "1,234"
    assert extract_hash_answer("no hashes") is None


STRICT = "<reasoning>\nStep.\n</reasoning>\n<answer>\n18\n</answer>\n"
BOXED_TAIL = "<reasoning>\nStep.\n</reasoning>\n<answer>\n\\boxed{18}\n</answer>xyz"  # 63 characters
PLAIN = "The answer is 18."
ANSWER_ONLY = "<answer>18</answer>"


def test_xmlcount_hand_worked() -> None:
    # All four tags once, nothing after the closing tag: 4 * 0.125.
    assert count_xml(STRICT) == pytest.approx(0.5)
    # "\n</answer>\n" is absent, so the third term is penalised by the whole length (63 * 0.001),
    # the fourth by len("xyz") - 1 = 2: 0.5 - 0.063 - 0.002.
    assert len(BOXED_TAIL) == 63
    assert count_xml(BOXED_TAIL) == pytest.approx(0.435)
    assert count_xml(PLAIN) == 0.0
    assert count_xml(ANSWER_ONLY) == 0.0


def test_rewards_hand_worked() -> None:
    completions = [
        [{"role": "assistant", "content": text}] for text in (STRICT, BOXED_TAIL, PLAIN, ANSWER_ONLY)
    ]
    answers = ["18"] * 4
    assert xmlcount_reward_func(completions) == pytest.approx([0.5, 0.435, 0.0, 0.0])
    # d1's soft pattern has no re.DOTALL: "<reasoning>.*?</reasoning>" must close on the first line.
    assert soft_format_reward_func(completions) == [0.0, 0.0, 0.0, 0.0]
    assert strict_format_reward_func(completions) == [0.5, 0.0, 0.0, 0.0]
    assert int_reward_func(completions) == [0.5, 0.0, 0.0, 0.5]
    assert correctness_reward_func([[{"content": "q"}]] * 4, completions, answer=answers) == [
        2.0,
        0.0,
        0.0,
        2.0,
    ]


@pytest.mark.parametrize(
    ("text", "soft", "strict"),
    [
        ("<reasoning>Step.</reasoning>\n<answer>18</answer>", 0.5, 0.0),
        ("<reasoning>Step.</reasoning> \n\t<answer>18</answer> tail\nmore", 0.5, 0.0),  # \s* spans lines
        ("<reasoning>a</reasoning><answer>b</reasoning><answer>18</answer>", 0.5, 0.0),  # second candidate
        ("<reasoning>Step.</reasoning>\n<answer>\n18</answer>", 0.0, 0.0),  # answer spans a newline
        ("<reasoning>One.\nTwo.</reasoning><answer>18</answer>", 0.0, 0.0),  # reasoning spans a newline
        ("x<reasoning>Step.</reasoning><answer>18</answer>", 0.0, 0.0),  # re.match: must start the text
        ("<reasoning>\nOne.\nTwo.\n</reasoning>\n<answer>\n18\n</answer>\n", 0.0, 0.0),  # multi-line: 0 + 0
        ("<reasoning>\nOne.\n</reasoning>\n<answer>\n18\n</answer>\n\n", 0.0, 0.5),  # "$" before a final \n
        ("<reasoning>\nOne.\n</reasoning>\n<answer>\n18\n</answer>\nx", 0.0, 0.0),
    ],
)
def test_format_rewards_are_d1s_without_dotall(text: str, soft: float, strict: float) -> None:
    assert soft_format_reward_func([text]) == [soft]
    assert strict_format_reward_func([text]) == [strict]


def test_format_rewards_on_d1s_published_generations() -> None:
    # With the "<reasoning>" prefill the model saw, re.DOTALL gave 96 of 205 the soft 0.5; d1 gives none
    # (every generation's reasoning spans lines), and none has the strict layout either way.
    items = json.loads(reference_path("d1-generations", "gsm8k_instruct_256_128_0_generations.json").read_text())
    texts = ["<reasoning>" + item["generations"] for item in items["generations"]]
    assert len(texts) == 205
    assert soft_format_reward_func(texts) == [0.0] * 205
    assert strict_format_reward_func(texts) == [0.0] * 205
    dotall = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
    assert sum(1 for text in texts if dotall.match(text)) == 96


def test_rewards_accept_plain_strings() -> None:
    assert correctness_reward_func(["q"], [STRICT], answer=["18"]) == [2.0]
    assert correctness_reward_func(["q"], [STRICT], answer=["19"]) == [0.0]
    assert int_reward_func([STRICT]) == [0.5]


def test_reward_funcs_names_and_weights() -> None:
    names = [f.__name__ for f in TASK.reward_funcs]
    assert names == [
        "xmlcount_reward_func",
        "soft_format_reward_func",
        "strict_format_reward_func",
        "int_reward_func",
        "correctness_reward_func",
    ]
    assert TASK.default_reward_weights == [1.0] * 5


def test_system_prompt_is_d1s() -> None:
    assert SYSTEM_PROMPT.startswith("You are a math expert.")
    assert "Wrap the final answer in a \\boxed{}. \nRespond in the following format:\n" in SYSTEM_PROMPT
    assert SYSTEM_PROMPT.endswith("<answer>\n\\boxed{...}\n</answer>")


def test_local_files(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1?", "answer": "1 + 1 = 2\n#### 2"},
        {"question": "Q2?", "answer": "#### 1,000"},
    ]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert TASK.load_test(path) == [
        {"question": "Q1?", "ground_truth": 2.0},
        {"question": "Q2?", "ground_truth": 1000.0},
    ]
    train = TASK.load_train(path)
    assert train[0]["answer"] == "2"
    assert train[1]["answer"] == "1,000"
    assert train[0]["prompt"][0]["content"].endswith("</answer>\n\n\nQ1?")
    shuffled = TASK.load_train(path, seed=1)  # d1: Dataset.shuffle(seed), no hold-out for GSM8K
    assert sorted(row["question"] for row in shuffled) == ["Q1?", "Q2?"]
    assert get_task("countdown").train_holdout == get_task("sudoku").train_holdout == 500
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(ValueError, match="question"):
        TASK.load_test(bad)
