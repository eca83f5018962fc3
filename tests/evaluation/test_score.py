"""Scoring d1 generation files: exact reference numbers, aggregation, tables, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.evaluation.score import (
    count_effective_tokens,
    format_table,
    infer_task,
    load_generation_file,
    score_paths,
    scores_to_json,
    setup_name,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
GENERATIONS = REFERENCE / "d1-generations"

# d1's parse_and_get_acc.py on the four shared files (reference README).
EXPECTED = {
    "gsm8k_instruct_256_128": (160, 205, 78.05),
    "math500_instruct_256_128": (26, 84, 30.95),
    "countdown_instruct_256_128": (7, 37, 18.92),
    "sudoku_instruct_256_128": (23, 296, 7.77),
}


@pytest.fixture(scope="module")
def reference_scores():
    if not GENERATIONS.is_dir():
        pytest.skip("../shared/reference not found: reference fixtures absent")
    return score_paths([GENERATIONS])


def test_reference_scores_exact(reference_scores) -> None:
    assert set(reference_scores) == set(EXPECTED)
    for setup, (correct, total, percent) in EXPECTED.items():
        score = reference_scores[setup]
        assert (score.correct, score.total) == (correct, total), setup
        assert round(score.accuracy, 2) == percent
    assert reference_scores["sudoku_instruct_256_128"].task == "sudoku"
    assert len(reference_scores["gsm8k_instruct_256_128"].items) == 205


def test_json_and_table(reference_scores) -> None:
    data = scores_to_json(reference_scores)
    assert data["gsm8k_instruct_256_128"]["correct"] == 160
    assert data["sudoku_instruct_256_128"]["total"] == 296
    assert round(data["countdown_instruct_256_128"]["accuracy"], 2) == 18.92
    assert "math_verify_accuracy" not in data["gsm8k_instruct_256_128"]
    mv = data["math500_instruct_256_128"]["math_verify_accuracy"]
    assert 0.0 <= mv <= 100.0
    assert all(50 < entry["avg_effective_tokens"] < 300 for entry in data.values())
    table = format_table(reference_scores)
    lines = table.splitlines()
    assert lines[0].startswith("Setup (task_model_seqlen_diffusteps)")
    assert "MathVerify" in lines[0]
    assert any(line.startswith("gsm8k_instruct_256_128") and "78.05%" in line for line in lines)
    assert any(line.startswith("sudoku_instruct_256_128") and "7.77%" in line for line in lines)
    assert lines[-1] == "=" * len(lines[1])


def test_items_carry_details(reference_scores) -> None:
    sudoku = reference_scores["sudoku_instruct_256_128"].items[0]
    assert sudoku.extracted == "4320004330120004"
    assert (sudoku.n_correct, sudoku.n_total) == (1, 8)
    gsm = reference_scores["gsm8k_instruct_256_128"].items[0]
    assert gsm.extracted == 18.0 and gsm.correct


def test_ranks_aggregate(tmp_path: Path) -> None:
    source = GENERATIONS / "gsm8k_instruct_256_128_0_generations.json"
    if not source.exists():
        pytest.skip("../shared/reference not found: reference fixtures absent")
    data = json.loads(source.read_text())
    for rank, part in enumerate((data["generations"][:100], data["generations"][100:])):
        (tmp_path / f"gsm8k_mine_256_128_{rank}_generations.json").write_text(
            json.dumps({"generations": part})
        )
    (tmp_path / "notes.json").write_text("{}")  # ignored: not a generation file
    scores = score_paths([tmp_path])
    assert list(scores) == ["gsm8k_mine_256_128"]
    assert (scores["gsm8k_mine_256_128"].correct, scores["gsm8k_mine_256_128"].total) == (160, 205)
    assert len(scores["gsm8k_mine_256_128"].files) == 2


def _write(tmp_path: Path, name: str, payload: object) -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ({"metrics": {}}, "missing key 'generations'"),
        ([1, 2], "missing key 'generations'"),
        ({"generations": {}}, "must be a list"),
        ({"generations": ["x"]}, r"generations\[0\] is not an object"),
        (
            {"generations": [{"question": "q", "generations": "g"}]},
            r"generations\[0\] is missing key 'ground_truth'",
        ),
        ({"generations": [{"question": "q", "ground_truth": 1}]}, r"missing key 'generations'"),
        ({"generations": [{"question": "q", "generations": 5, "ground_truth": 1}]}, "must be a string"),
    ],
)
def test_malformed_files(tmp_path: Path, payload: object, message: str) -> None:
    path = _write(tmp_path, "gsm8k_x_1_1_0_generations.json", payload)
    with pytest.raises(ValueError, match=message) as info:
        load_generation_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=message):
        score_paths([path])


@pytest.mark.parametrize(
    ("name", "item", "message"),
    [
        (
            "sudoku_x_1_1_0_generations.json",
            {"question": "Solve the following Sudoku puzzle: 0300040000203000\n", "ground_truth": "1342"},
            "16-digit solution",
        ),
        ("sudoku_x_1_1_0_generations.json", {"question": "no puzzle here", "ground_truth": "1" * 16}, "puzzle"),
        ("countdown_x_1_1_0_generations.json", {"question": "q", "ground_truth": [5, 6]}, r"\[\[numbers\], target\]"),
        ("humaneval_x_1_1_0_generations.json", {"question": "q", "ground_truth": "42"}, "object of the problem's tests"),
    ],
)
def test_ungradable_items_name_file_and_row(tmp_path: Path, name: str, item: dict, message: str) -> None:
    path = _write(tmp_path, name, {"generations": [{**item, "generations": "<answer>1 + 2</answer>"}]})
    with pytest.raises(ValueError, match=message) as info:
        score_paths([path])
    assert f"{path}: generations[0]" in str(info.value)


def test_unreadable_and_misnamed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_generation_file(tmp_path / "missing_0_generations.json")
    with pytest.raises(ValueError, match="no such file"):
        score_paths([tmp_path / "missing_0_generations.json"])
    misnamed = _write(tmp_path, "results.json", {"generations": []})
    with pytest.raises(ValueError, match="not a d1 generation file name"):
        score_paths([misnamed])
    unknown = _write(tmp_path, "poetry_x_0_generations.json", {"generations": []})
    with pytest.raises(ValueError, match="cannot tell the task"):
        score_paths([unknown])


def test_setup_names_and_tasks() -> None:
    assert setup_name("/a/b/gsm8k_instruct_256_128_3_generations.json") == "gsm8k_instruct_256_128"
    assert setup_name("math_ckpt_fs2_512_256_0_generations.json") == "math_ckpt_fs2_512_256"
    assert infer_task("gsm8k_instruct_256_128") == "gsm8k"
    assert infer_task("math_instruct_256_128") == "math500"
    assert infer_task("countdown_math-model_256_128") == "countdown"  # the prefix wins
    assert infer_task("mygsm_run_256_128") == "gsm8k"  # d1's substring fallback


def test_empty_setup_and_token_counter() -> None:
    assert count_effective_tokens("") == 0
    assert count_effective_tokens("<|endoftext|><|endoftext|>") == 0
    assert count_effective_tokens("The answer is 18.") == 6  # The| answer| is| |18|. as in cl100k
    assert count_effective_tokens("12345") == 2  # cl100k splits digits in groups of three


def test_code_setups_report_pass_at_k_over_samples_per_problem(tmp_path: Path, capsys) -> None:
    from d1.cli.score import main as score_main
    from d1.sandbox import check_sandbox

    if check_sandbox():
        pytest.skip(f"no sandbox here: {check_sandbox()}")
    right, wrong = "```python\ndef f(x):\n    return x + 1\n```", "no code"
    problems = [("f(1) == 2?", ["assert f(1) == 2"], 3), ("f(5) == 6?", ["assert f(5) == 6"], 1)]
    items = [
        {"question": question, "ground_truth": {"tests": tests}, "generations": right if k < passes else wrong}
        for question, tests, passes in problems
        for k in range(10)
    ]  # ten samples of each problem: 3 and 1 right
    _write(tmp_path, "tiny_code_m_8_4_0_generations.json", {"generations": items[:13]})
    _write(tmp_path, "tiny_code_m_8_4_1_generations.json", {"generations": items[13:]})
    score = score_paths([tmp_path])["tiny_code_m_8_4"]
    assert score.accuracy == pytest.approx(20.0)
    # pass@5: 1 - C(7,5)/C(10,5) = 1 - 21/252 and 1 - C(9,5)/C(10,5) = 1 - 126/252, averaged
    assert score.pass_at == pytest.approx({1: 20.0, 5: 100 * (2 - 147 / 252) / 2, 10: 100.0})
    assert score_main([str(tmp_path), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["tiny_code_m_8_4"]
    assert entry["pass_at_k"] == pytest.approx({"pass@1": 20.0, "pass@5": 70.8333333, "pass@10": 100.0})
    assert "tiny_code_m_8_4: pass@1 20.00%, pass@5 70.83%, pass@10 100.00% (10 samples per problem)" in format_table(
        {"tiny_code_m_8_4": score}
    )
