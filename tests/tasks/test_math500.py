"""MATH500: LaTeX normalisation, d1's boxed parsing, and the RL rewards (including d1's quirks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.latex import is_equiv, last_boxed_only_string, remove_boxed, strip_string
from d1.tasks.math500 import (
    SYSTEM_PROMPT,
    boxed_and_answer_tags_format_reward,
    boxed_in_answer,
    correctness_reward_func_math,
    parse_math_answer,
)

TASK = get_task("math500")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{5}.", "\\boxed{5}"),
        ("\\boxed{1} then \\boxed{\\frac{\\sqrt{3}}{2}} end", "\\boxed{\\frac{\\sqrt{3}}{2}}"),
        ("\\fbox{7}", "\\fbox{7}"),
        ("no box here", "no box here"),  # returned unchanged
        ("\\boxed{5", None),  # unclosed
        ("$\\boxed 5$ and more", "\\boxed 5"),
    ],
)
def test_last_boxed_only_string(text: str, expected: str | None) -> None:
    assert last_boxed_only_string(text) == expected


def test_remove_boxed() -> None:
    assert remove_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert remove_boxed("\\boxed 5") == "5"
    assert remove_boxed("\\boxed{}") == ""
    assert remove_boxed("plain") == "plain"
    with pytest.raises(TypeError):
        remove_boxed(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("\\tfrac{3}{4}", "3/4", True),
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("90^\\circ", "90", True),
        ("10\\%", "10", True),
        ("\\$5", "5", True),
        ("5 \\text{ cm}", "5", True),
        ("x = 3", "3", True),
        ("\\sqrt3", "\\sqrt{3}", True),
        (".5", "\\frac{1}{2}", True),
        ("16 \\sqrt{3}", "16\\sqrt{3}", True),
        ("2", "3", False),
        ("\\frac{1}{2}", "\\frac{2}{4}", False),  # no arithmetic, only string normalisation
        ("\\sqrt{2}/2", "\\sqrt{2}/2", True),  # normalisation raises -> raw strings compared
        ("\\sqrt{2} / 2", "\\sqrt{2}/2", False),  # ... and raw strings differ
        ("a \\text{ b} \\text{ c}", "a", False),  # two "\\text{ " -> raw comparison
        ("\\frac", "\\frac", True),
        ("½", "\\frac{1}{2}", False),
        ("", "", True),
    ],
)
def test_is_equiv(a: str, b: str, equal: bool) -> None:
    assert is_equiv(a, b) is equal


def test_is_equiv_types() -> None:
    assert is_equiv(0.5, "0.5000001")
    assert not is_equiv(0.5, "half")
    assert is_equiv(None, None)
    assert not is_equiv(None, "1")


def test_strip_string_examples() -> None:
    assert strip_string("\\left(\\dfrac{1}{2}\\right)") == "(\\frac{1}{2})"
    assert strip_string("k = 0.5") == "\\frac{1}{2}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>\\boxed{\\frac{\\sqrt{3}}{2}}</answer>", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{1} and finally \\boxed{2}", "2"),
        ("\\boxed{} <answer>5</answer>", "5"),  # empty box -> <answer> text
        ("\\boxed{5 <answer> 6 </answer>", "6"),  # unclosed box -> <answer> text
        ("\\boxed{5", None),  # unclosed and no <answer>
        ("<answer>7</answer>", "<answer>7</answer>"),  # no box: d1 keeps the whole text
        ("", ""),  # d1 keeps the empty string (graded against the truth, never equal)
        ("\\boxed{}", ""),
    ],
)
def test_parse_math_answer(text: str, expected: str | None) -> None:
    assert parse_math_answer(text) == expected


def test_parse_verdicts() -> None:
    assert TASK.parse("<answer>\\boxed{\\dfrac{1}{2}}</answer>", "\\frac{1}{2}").correct
    assert TASK.parse("\\boxed{16\\sqrt{3}}", "16 \\sqrt{3}").correct
    assert not TASK.parse("<answer>7</answer>", "7").correct  # whole text is compared, not "7"
    assert not TASK.parse("\\boxed{5", "5").correct
    assert not TASK.parse("\\boxed{\\frac{1}{2}", "\\frac{1}{2}").correct


SOLUTION = "Half of it, so the answer is $\\boxed{\\frac{1}{2}}$."


def test_math_rewards_hand_worked() -> None:
    completions = [
        [{"role": "assistant", "content": "<reasoning>r</reasoning><answer>\\boxed{0.5}</answer>"}],
        [{"role": "assistant", "content": "I think 1/2"}],
        [{"role": "assistant", "content": "\\boxed{\\dfrac12}"}],
        [{"role": "assistant", "content": "<answer>\\boxed{3}</answer>"}],
    ]
    answers = [SOLUTION] * 4
    assert correctness_reward_func_math(None, completions, answers) == [2.0, 0.0, 2.0, 0.0]
    # d1's check is `"\boxed" in r` in a non-raw string ("\b" = backspace), so the box part is 0.5:
    # 1.0 (<answer> tag) + 0.5 = 1.5 -> 0.75 with a tag; 0 + 0.5 -> 0.25 without.
    assert boxed_in_answer(completions) == [1.5, 0.5, 0.5, 1.5]
    assert boxed_and_answer_tags_format_reward(None, completions, answers) == [0.75, 0.25, 0.25, 0.75]
    assert boxed_in_answer(["<answer>\boxed</answer>"]) == [2.0]  # only a literal backspace counts


def test_reward_funcs_names() -> None:
    assert [f.__name__ for f in TASK.reward_funcs] == [
        "correctness_reward_func_math",
        "boxed_and_answer_tags_format_reward",
    ]
    assert get_task("math") is TASK


def test_system_prompt_is_d1s() -> None:
    assert SYSTEM_PROMPT.endswith('<answer>\n\\boxed{...}\n</answer>" \n')
    assert "Wrap the final answer in a \\boxed{}.\nRespond" in SYSTEM_PROMPT


def test_local_files(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "1+1?", "answer": "2", "solution": "It is $\\boxed{2}$."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert TASK.load_test(path) == [{"question": "1+1?", "ground_truth": "2"}]
    train = TASK.load_train(path)
    assert train[0]["answer"] == "It is $\\boxed{2}$."
    content = train[0]["prompt"][0]["content"]
    assert content.endswith(
        "</answer>\n\n\nYou are a math expert. You will be given a question to solve. "
        "Solve it step by step. Wrap the final answer in a \\boxed{}. \n\n1+1?"
    )
