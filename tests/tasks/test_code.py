"""Code tasks: extraction by hand, grading in the sandbox (HumanEval's 164 canonical solutions pass, `pass`
bodies fail), MBPP from a local file, DiffuCoder's rewards, AceCode rows, tiny_code, pass@k, protocols."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from d1.tasks import get_task
from d1.tasks.code import (
    chat_code,
    code_format_reward_func,
    code_format_score,
    code_reward_func,
    continuation_code,
    extract_fenced_code,
    fenced_blocks,
    pass_at_k,
)
from d1.tasks.code_protocols import begin_done_code, first_fenced_or_text
from d1.tasks.official import check_protocol, protocol_task
from d1.tasks.synthetic import make_dataset
from d1.tasks.tiny_code import OFFSETS, SLOPES, is_test_function, make_tiny_code_problems
from tests.conftest import require_sandbox

SIGNATURE = 'def add(a, b):\n    """Sum."""\n'




# ---------------------------------------------------------------- extraction


def test_fenced_blocks_alternate_and_mark_the_unclosed_one() -> None:
    text = "intro ```python\nx = 1\n``` mid ```\ny = 2\n``` tail ```py\nz = 3"
    assert fenced_blocks(text) == [("python", "x = 1\n", True), ("", "y = 2\n", True), ("py", "z = 3", False)]
    assert fenced_blocks("no fences") == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```\nplain = 1\n```\n```python\ntagged = 2\n```", "tagged = 2\n"),  # a python block wins
        ("```text\nnot code\n```\n```\nuntagged = 1\n```", "untagged = 1\n"),
        ("cut by length ```python\ndef f():\n    ret", "def f():\n    ret"),
        ("```python\nx = 1\n```<|eot_id|>```python\ny = 2\n```", "x = 1\n"),
        ("<|endoftext|>```python\nafter_eos = 1\n```", None),  # nothing after the end of the generation
        ("no code at all", None),
    ],
)
def test_extract_fenced_code(text: str, code: str | None) -> None:
    assert extract_fenced_code(text) == code


def test_completion_style_code_continues_the_prompt_and_stops() -> None:
    body = "    return a + b\n\n\ndef unrelated():\n    pass"
    assert continuation_code(SIGNATURE, body) == SIGNATURE + "    return a + b\n\n"
    assert (
        continuation_code(SIGNATURE, "    return a + b\n<|eot_id|>junk") == SIGNATURE + "    return a + b\n"
    )
    assert (
        continuation_code(SIGNATURE, "    return a + b\nprint(add(1, 2))") == SIGNATURE + "    return a + b"
    )


def test_chat_code_puts_a_bare_body_under_the_signature() -> None:
    whole = "```python\ndef add(a, b):\n    return a + b\n```"
    assert chat_code(whole, SIGNATURE, "add") == "def add(a, b):\n    return a + b\n"
    assert chat_code("```python\n    return a + b\n```", SIGNATURE, "add") == SIGNATURE + "    return a + b\n"
    assert chat_code("    return a + b", SIGNATURE, "add") == SIGNATURE + "    return a + b"
    assert chat_code("prose only") is None


def test_opencompass_extractions() -> None:
    assert first_fenced_or_text("x\n```python\n    return 1\n```") == "    return 1\n"
    assert first_fenced_or_text("\n\n    return 1") == "return 1"  # lstrip, as humaneval_postprocess_v2
    assert begin_done_code("[BEGIN]\n 'def f():\n  return 1' \n[DONE]") == "def f():\n  return 1"
    assert begin_done_code("[BEGIN]\ndef f(): return 1") == "def f(): return 1"
    assert begin_done_code("```python\ndef f(): return 2\n```") == "def f(): return 2\n"


# ---------------------------------------------------------------- pass@k and the format reward (nothing runs)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 3, 1, 0.3),
        (10, 3, 5, 1 - 21 / 252),  # C(7, 5) = 21, C(10, 5) = 252
        (3, 1, 2, 1 - 1 / 3),  # C(2, 2) / C(3, 2)
        (5, 5, 2, 1.0),
        (4, 0, 2, 0.0),
        (200, 1, 100, 0.5),  # 1 - C(199, 100) / C(200, 100) = 1 - 100/200
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert math.isclose(pass_at_k(n, c, k), expected, rel_tol=1e-12)


def test_pass_at_k_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Sure.\n```python\ndef f(x):\n    return x\n```\n", 1.0),
        ("```python\ndef f(x):\n    return x\n```", 1.0),  # DiffuCoder wants a final newline; accepted
        ("```python\ndef f(x:\n```\n", 0.5),  # a block that does not parse
        ("```python\na = 1\n```\n```python\nb = 2\n```\n", 0.0),  # two blocks
        ("```python\na = 1\n```\nand some prose after", 0.0),
        ("```\na = 1\n```\n", 0.0),  # not tagged python
        ("```python\na = 1\n", 0.0),  # unclosed
        ("def f(x): return x", 0.0),
    ],
)
def test_code_format_score(text: str, score: float) -> None:
    assert code_format_score(text) == score
    assert code_format_reward_func([None], [[{"content": text}]]) == [score]


# ---------------------------------------------------------------- grading in the sandbox


def test_humaneval_canonical_solutions_pass_and_pass_bodies_fail() -> None:
    require_sandbox()
    task = get_task("humaneval")
    items = task.load_test()
    assert len(items) == 164 and items[0]["ground_truth"]["task_id"] == "HumanEval/0"
    truths, questions = [i["ground_truth"] for i in items], [i["question"] for i in items]
    canonical = [f"```python\n{t['prompt']}{t['canonical_solution']}```" for t in truths]
    assert [p.correct for p in task.parse_many(canonical, truths, questions)] == [True] * 164
    # the body alone continues the prompt (completion style), so this runs the prompt + `pass`
    assert [p.correct for p in task.parse_many(["    pass\n"] * 164, truths, questions)] == [False] * 164


def _mbpp_file(tmp_path: Path) -> Path:
    rows = [
        {
            "task_id": 1,
            "prompt": "Write a function to find the square root rounded down.",
            "code": "import math\ndef isqrt(n):\n    return math.isqrt(n)",
            "test_list": ["assert isqrt(17) == 4", "assert isqrt(16) == 4"],
            "test_imports": ["import math"],
        },
        {
            "task_id": 2,
            "prompt": "Write a function that doubles a number.",
            "code": "def double(x):\n    return 2 * x",
            "test_list": ["assert double(3) == 6", "assert double(-1) == -2"],
            "test_imports": [],
        },
    ]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_mbpp_from_a_local_file_graded_in_the_sandbox(tmp_path: Path, monkeypatch) -> None:
    require_sandbox()
    task = get_task("mbpp")
    monkeypatch.setattr(task, "timeout_s", 2.0)  # for the hanging answer below
    items = task.load_test(_mbpp_file(tmp_path))
    assert items[1]["question"] == (
        "Write a function that doubles a number. Your code should pass these tests:\n\n"
        "assert double(3) == 6\nassert double(-1) == -2"
    )
    truths = [item["ground_truth"] for item in items]
    answers = [
        "```python\ndef isqrt(n):\n    return math.isqrt(n)\n```",  # math comes from test_imports
        "```python\ndef double(x):\n    return x + 2\n```",  # wrong for -1
    ]
    parsed = task.parse_many(answers, truths, [item["question"] for item in items])
    assert [p.correct for p in parsed] == [True, False]
    assert parsed[1].details["status"] == "error" and "AssertionError" in parsed[1].details["stderr"]
    exits_early = "```python\nimport sys\ndef double(x):\n    return 0\nsys.exit(0)\n```"
    assert not task.parse(exits_early, truths[1], "").correct  # status 0, but the tests never ran
    hang = task.parse("```python\ndef double(x):\n    while True:\n        pass\n```", truths[1], "")
    assert not hang.correct and hang.details["status"] == "timeout"
    assert task.parse("I cannot write that.", truths[1], "").correct is False


def test_code_reward_is_the_fraction_of_tests_passed(monkeypatch) -> None:
    require_sandbox()
    monkeypatch.setattr("d1.tasks.code.TIMEOUT_S", 2.0)  # for the hanging answer below
    tests = ["assert f(1) == 2", "assert f(2) == 3", "assert f(3) == 5", "assert f(0) == 1"]
    completions = [
        [{"content": "```python\ndef f(x):\n    return x + 1\n```\n"}],  # 3 of 4 (f(3) == 5 is wrong)
        [{"content": "```python\ndef f(x):\n    return 0\n```\n"}],
        [{"content": "```python\ndef f(x):\n    return x + 1\n```\nextra prose"}],  # format 0: not run
        [{"content": "```python\nimport sys\nprint('D1PASS', 0)\nsys.exit(0)\n```\n"}],  # cannot fake passes
        [
            {"content": "```python\ndef f(x):\n    while x:\n        pass\n    return 1\n```\n"}
        ],  # hangs on f(1)
    ]
    rewards = code_reward_func([None] * 5, completions, test_cases=[tests] * 5)
    assert rewards == [0.75, 0.0, 0.0, 0.0, 0.0]


def test_a_sandbox_that_cannot_run_raises_instead_of_scoring_zero(monkeypatch, tmp_path: Path) -> None:
    import d1.sandbox

    def unavailable(*args, **kwargs):
        raise d1.sandbox.SandboxUnavailable("no bubblewrap")

    monkeypatch.setattr(d1.sandbox, "run_programs", unavailable)
    good = [{"content": "```python\ndef f(x):\n    return x\n```\n"}]
    with pytest.raises(d1.sandbox.SandboxUnavailable):
        code_reward_func([None], [good], test_cases=[["assert f(1) == 1"]])
    with pytest.raises(d1.sandbox.SandboxUnavailable):
        get_task("tiny_code").parse("```python\nx = 1\n```", {"tests": ["assert x == 1"]}, "")
    path = make_dataset("tiny_code", 2, 0, tmp_path / "rows.jsonl", split="train")
    with pytest.raises(d1.sandbox.SandboxUnavailable):  # at loading, before any model would load
        get_task("tiny_code").load_train(path)


# ---------------------------------------------------------------- AceCode rows and tiny_code


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "test_cases": []}, "row 1 has no tests in column 'test_cases'"),
        ({"question": "q"}, "row 1 has no tests"),
        (
            {"question": "q", "test_cases": ["assert f(1) ==", "assert f(2) == 2"]},
            "row 1 test 0 does not parse",
        ),
        ({"question": "", "test_cases": ["assert True"]}, "row 1 needs a non-empty 'question'"),
    ],
)
def test_acecode_rows_without_usable_tests_are_refused(tmp_path: Path, row: dict, message: str) -> None:
    path = _jsonl(tmp_path / "ace.jsonl", [{"question": "ok", "test_cases": ["assert 1 == 1"]}, row])
    with pytest.raises(ValueError, match=f"{path.name}: {message}"):
        get_task("acecode").load_train(path)


def test_acecode_training_rows_use_diffucoders_prompt(tmp_path: Path) -> None:
    require_sandbox()  # loading checks that the sandbox runs
    path = _jsonl(tmp_path / "ace.jsonl", [{"question": "Write f.", "test_cases": '["assert f() == 1"]'}])
    (row,) = get_task("acecode").load_train(path)
    assert row["prompt"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write f."},
    ]
    assert row["test_cases"] == ["assert f() == 1"]  # a JSON list in a text cell is read as a list


def test_code_tasks_default_to_diffucoders_reward_weights() -> None:
    from d1.rl.run import resolve_rewards

    for name in ("acecode", "tiny_code", "humaneval", "mbpp"):
        funcs, weights = resolve_rewards(get_task(name), None, None)
        assert [f.__name__ for f in funcs] == ["code_reward_func", "code_format_reward_func"] and weights == [
            2.0,
            0.5,
        ]


def test_tiny_code_generator_is_seeded_and_keeps_test_functions_out_of_training() -> None:
    assert make_tiny_code_problems(20, 3) == make_tiny_code_problems(20, 3) != make_tiny_code_problems(20, 4)
    test_pairs = [(a, b) for a in SLOPES for b in OFFSETS if is_test_function(a, b)]
    test_solutions = {f"return {a} * x + {b}" for a, b in test_pairs}
    train = make_tiny_code_problems(200, 0, "train")
    assert not any(any(s in p["solution"] for s in test_solutions) for p in train)
    assert len(test_pairs) == 6 and len(make_tiny_code_problems(5, 0, "test")) == 5


def test_tiny_code_reference_completions_earn_full_rewards(tmp_path: Path) -> None:
    require_sandbox()
    path = make_dataset("tiny_code", 8, 0, tmp_path / "train.jsonl", split="train")
    task = get_task("tiny_code")
    rows = task.load_train(path)
    completions = [[{"content": task.reference_completion(row)}] for row in rows]
    tests = [row["test_cases"] for row in rows]
    assert code_reward_func([None] * 8, completions, test_cases=tests) == [1.0] * 8
    assert code_format_reward_func([None] * 8, completions) == [1.0] * 8
    wrong = [[{"content": "```python\ndef f(x):\n    return x\n```\n"}]] * 8
    assert max(code_reward_func([None] * 8, wrong, test_cases=tests)) < 1.0
    items = [task.eval_item(row) for row in rows]
    parsed = task.parse_many(
        [c[0]["content"] for c in completions], [i["ground_truth"] for i in items], [""] * 8
    )
    assert all(p.correct for p in parsed)


# ---------------------------------------------------------------- protocols


def test_code_protocols_map_to_their_variants_and_refuse_elsewhere() -> None:
    for protocol in ("official", "dream", "diffucoder", "completion"):
        assert "github" not in protocol_task(get_task("humaneval"), protocol).source.lower()
        assert protocol_task(get_task("mbpp"), protocol).name == "mbpp"
    with pytest.raises(ValueError, match="protocol='dream' has no definition for task 'gsm8k'"):
        check_protocol("dream", get_task("gsm8k"))
    with pytest.raises(ValueError, match="protocol='official' has no definition for task 'tiny_code'"):
        check_protocol("official", get_task("tiny_code"))


class _Template:
    """A chat template shown as text: each turn as `<role>content</role>`, then `<assistant>`."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        turns = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return turns + ("<assistant>" if add_generation_prompt else "")


def test_code_protocol_prompts() -> None:
    he, prompt = get_task("humaneval"), "def f():\n"
    build = {
        p: protocol_task(he, p).build_prompt(_Template(), prompt) for p in ("official", "dream", "diffucoder")
    }
    assert build["official"] == "<user>Complete the following python code:\ndef f():\n</user><assistant>"
    assert build["dream"] == (
        "<user>Write a solution to the following problem and make sure that it passes the tests:\n```def f():\n"
        "</user><assistant>Here is the completed function:\n```python\ndef f():\n\n"
    )
    assert build["diffucoder"] == (
        "<system>You are an intelligent programming assistant to produce Python algorithmic solutions</system>"
        "<user>Can you complete the following Python function?\n```python\ndef f():\n\n```\n</user>"
        "<assistant>```python\n"
    )
    assert protocol_task(he, "completion").build_prompt(_Template(), prompt) == prompt
    assert he.build_prompt(_Template(), prompt).endswith("def f():\n</user><assistant>")  # no <reasoning>
    mbpp = protocol_task(get_task("mbpp"), "official").build_prompt(
        _Template(), "Task. Your code should pass these tests:\n\nassert t()"
    )
    assert mbpp.count("<user>You are an expert Python programmer") == 4 and mbpp.endswith(
        "task: Task. Your code should pass these tests:\n\n assert t()  \n</user><assistant>"
    )
