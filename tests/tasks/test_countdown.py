"""Countdown: d1's eval parsing, RL reward values and the shared test file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.countdown import (
    SYSTEM_PROMPT,
    compute_score,
    countdown_reward_func,
    extract_countdown_equation,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
TASK = get_task("countdown")
TRUTH = [[49, 55, 53], 51]


def _reference(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip("../shared/reference not found: reference fixtures absent")
    return path


@pytest.mark.parametrize(
    ("text", "equation", "correct"),
    [
        ("<answer>\n\\boxed{49 + 55 - 53}\n</answer>", "49 + 55 - 53", True),
        ("\\boxed{55 - 53 + 49} then \\boxed{49 + 55 - 53 = 51}", "49 + 55 - 53", True),  # "= 51" dropped
        ("\\boxed{(55 - 53) \\times 49}", "(55 - 53) * 49", False),
        ("\\boxed{53 \\div 53}", "53 / 53", False),
        ("\\boxed{49 + 55 + 53}", "49 + 55 + 53", False),
        ("\\boxed{49 + 55}", "49 + 55", False),  # a number missing
        ("\\boxed{49 + 55 - 53 + 0}", "49 + 55 - 53 + 0", False),  # an extra number
        ("<answer>49 + 55 - 53</answer>", "<answer>49 + 55 - 53</answer>", False),  # no box: whole text
        ("\\boxed{49 + 55 - 53 <answer>49+55-53</answer>", "49+55-53", True),  # unclosed box: <answer>
        ("49 + 55 - 53", "49 + 55 - 53", True),  # bare text is evaluated as a whole
        ("\\boxed{49 ** 55 - 53}", "49 ** 55 - 53", False),
        ("\\boxed{49 + 55 - 53.0}", "49 + 55 - 53.0", False),  # "53.0" reads as numbers 53 and 0
        ("\\boxed{}", "", False),
        ("", "", False),
        ("\\boxed{٤٩ + 55 - 53}", "٤٩ + 55 - 53", False),
    ],
)
def test_parse(text: str, equation: str, correct: bool) -> None:
    parsed = TASK.parse(text, TRUTH)
    assert parsed.extracted == equation
    assert parsed.correct is correct
    assert (parsed.n_correct, parsed.n_total) == (int(correct), 1)


def test_bombs_do_not_hang() -> None:
    parsed = TASK.parse("\\boxed{30**100**93}", [[30, 100, 93], 23])
    assert not parsed.correct
    assert parsed.details["value"] is None


def test_truth_from_question_when_missing() -> None:
    parsed = TASK.parse("\\boxed{49 + 55 - 53}", None, question="Numbers: [49, 55, 53]\nTarget: 51")
    assert parsed.correct


def test_extract_equation() -> None:
    assert extract_countdown_equation("\\boxed{2 \\cdot 3 = 6}") == "2 * 3"


def test_rl_reward_hand_worked() -> None:
    texts = [
        "<reasoning>r</reasoning><answer>49 + 55 - 53</answer>",  # correct: 1.0
        "<answer>49 + 55 + 53</answer>",  # wrong value: 0.1
        "<answer>49 + 55</answer>",  # wrong numbers: 0.1
        "49 + 55 - 53",  # no <answer>: 0.0
        "<answer>\\boxed{49 + 55 - 53}</answer>",  # not evaluable: 0.1
        "<answer>1</answer><answer> (49 + 55) - 53 </answer>",  # last tag, stripped: 1.0
        "<answer>49**55-53</answer>",  # rejected power: 0.1
    ]
    expected = [1.0, 0.1, 0.1, 0.0, 0.1, 1.0, 0.1]
    n = len(texts)
    kwargs = {"numbers": [[49, 55, 53]] * n, "target": [51] * n}
    assert countdown_reward_func(None, texts, **kwargs) == expected
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert countdown_reward_func(None, chat, run_name="x", step=3, **kwargs) == expected
    assert compute_score("<answer>7 / 7 + 1</answer>", [7, 7, 1], 2) == 1.0


def test_system_prompt_is_d1s() -> None:
    assert "For example: \\boxed{a + b * c}Respond in the following format:\n" in SYSTEM_PROMPT
    assert SYSTEM_PROMPT.endswith("<answer>\n\\boxed{...}\n</answer>")


def test_loads_d1_test_file_and_reproduces_d1_subsample() -> None:
    path = _reference("d1-data", "countdown_cd3_test.jsonl")
    items = TASK.load_test(path)
    assert len(items) == 256
    assert items[0] == {"question": "Numbers: [30, 100, 93]\nTarget: 23", "ground_truth": [[30, 100, 93], 23]}
    # d1 draws its 256 with seed 42 and rank 0 of 7 gets every 7th: the published file's order.
    generations = json.loads(
        _reference("d1-generations", "countdown_instruct_256_128_0_generations.json").read_text()
    )
    rank0 = TASK.load_test(path, subsample=TASK.default_subsample, seed=42)[0::7]
    assert [i["question"] for i in rank0] == [g["question"] for g in generations["generations"]]
    assert [i["ground_truth"] for i in rank0] == [g["ground_truth"] for g in generations["generations"]]


def test_training_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [
        {"nums": [2, 3, 4], "target": 5},
        {"nums": [1, 2, 3, 4], "target": 10},
        {"input": "6,7,8", "output": "5"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = TASK.load_train(path)
    assert [(r["numbers"], r["target"]) for r in train] == [([2, 3, 4], 5), ([6, 7, 8], 5)]
    content = train[0]["prompt"][0]["content"]
    assert content.startswith("\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n")
    assert (
        "</answer>\n\nUsing only the numbers [2, 3, 4], create an arithmetic expression that evaluates to exactly 5."
        in content
    )
    assert content.endswith("a valid answer is: <answer>\n2*4-3\n</answer>")
    with pytest.raises(ValueError, match="local file"):
        TASK.load_test(None)
