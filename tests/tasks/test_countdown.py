"""Countdown: d1's eval parsing, RL reward values and the shared test file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.countdown import (
    SYSTEM_PROMPT,
    compute_aligned_score,
    compute_score,
    countdown_aligned_reward_func,
    countdown_reward_func,
    drop_result_tail,
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


@pytest.mark.parametrize(
    ("equation", "expected"),
    [
        ("1 + 2 = 3", "1 + 2"),
        ("x 1 + 2 =3 and 4 = 4", "1 + 2"),  # the first run followed by "=" and a digit
        ("1 + 2 =x, 3 * 4 = .5", "3 * 4"),  # "=x" does not qualify; ". " and digits do
        ("(1 + 2) = ", "(1 + 2)"),  # a space after "=" qualifies
        ("1 + 2 =", "1 + 2 ="),  # nothing after "=": unchanged
        ("a=1", "a=1"),  # "a" is not an expression character
        ("", ""),
    ],
)
def test_drop_result_tail(equation: str, expected: str) -> None:
    assert drop_result_tail(equation) == expected


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


def test_aligned_reward_reads_answer_like_the_eval_parser() -> None:
    texts = [
        "<answer>49 + 55 - 53</answer>",  # plain expression: 1.0 in both
        "<answer>\n\\boxed{49 + 55 - 53}\n</answer>",  # the eval prompt's format: 0.1 in d1's, 1.0 aligned
        "<answer>\\boxed{(55 - 53) \\times 49 \\div 49 + 49}</answer>",  # wrong numbers in both
        "<answer>\\boxed{55 \\times 53 \\div 53 - 4}</answer>",  # numbers wrong: 0.1 / 0.1
        "<answer>49 + 55 - 53 = 51</answer>",  # "= 51" dropped as the eval parser does
        "\\boxed{49 + 55 - 53}",  # no <answer>: 0.0 in both (the format part stays d1's)
        "<answer>\\boxed{49 + 55 - 53</answer>",  # unclosed box: the whole answer, not evaluable
    ]
    d1_scores = [1.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.1]
    aligned = [1.0, 1.0, 0.1, 0.1, 1.0, 0.0, 0.1]
    kwargs = {"numbers": [[49, 55, 53]] * len(texts), "target": [51] * len(texts)}
    assert countdown_reward_func(None, texts, **kwargs) == d1_scores
    assert countdown_aligned_reward_func(None, texts, **kwargs) == aligned
    for text, score in zip(texts, aligned, strict=True):  # rewarded iff the eval parser accepts the answer
        assert compute_aligned_score(text, [49, 55, 53], 51) == score
        if score == 1.0:
            assert TASK.parse(text.split("<answer>")[-1].split("</answer>")[0], TRUTH).correct


def test_aligned_reward_is_selectable_and_off_by_default() -> None:
    names = [f.__name__ for f in TASK.reward_funcs]
    assert names == ["countdown_reward_func", "countdown_aligned_reward_func"]
    assert TASK.default_reward_weights == [1.0, 0.0]


def test_rewards_on_d1s_published_generations() -> None:
    # d1's eval prompt asks for <answer>\boxed{...}</answer>, which d1's RL reward never scores as correct.
    items = json.loads(
        _reference("d1-generations", "countdown_instruct_256_128_0_generations.json").read_text()
    )["generations"]
    texts = [item["generations"] for item in items]
    columns = {"numbers": [i["ground_truth"][0] for i in items], "target": [i["ground_truth"][1] for i in items]}
    d1_scores = countdown_reward_func(None, texts, **columns)
    aligned = countdown_aligned_reward_func(None, texts, **columns)
    assert [d1_scores.count(v) for v in (1.0, 0.1, 0.0)] == [0, 26, 11]
    assert [aligned.count(v) for v in (1.0, 0.1, 0.0)] == [5, 21, 11]
    assert sum(TASK.parse(t, i["ground_truth"]).correct for t, i in zip(texts, items, strict=True)) == 7


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


def test_bad_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "cd.jsonl"
    path.write_text('{"input": "1,2,3", "output": "6"}\n{"input": "1,2,x", "output": "6"}\n')
    with pytest.raises(ValueError, match=rf"{path}: row 1 is not a Countdown problem of whole numbers"):
        TASK.load_test(path)
