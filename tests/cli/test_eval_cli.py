"""`d1 eval`, `d1 score` and `d1 data` end to end: d1-format files, exact reference scores, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d1.cli.main import main
from d1.evaluation.score import score_paths, scores_to_json
from d1.tasks.synthetic import make_dataset
from tests.conftest import reference_path, run_on_two_cpu_processes

TINY_SETTINGS = ["--gen_length", "16", "--block_length", "8", "--diffusion_steps", "8"]


@pytest.fixture(scope="module")
def sudoku_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("sudoku", 6, 0, tmp_path_factory.mktemp("data") / "sudoku.csv")


def _eval_args(model_dir: Path, data: Path, out: Path) -> list[str]:
    return [
        "eval", "--model_path", str(model_dir), "--dataset", "sudoku", "--data_path", str(data),
        "--output_dir", str(out), "--batch_size", "2", *TINY_SETTINGS,
    ]  # fmt: skip


def test_eval_then_score_json(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, capsys) -> None:
    assert main(_eval_args(tiny_model_dir, sudoku_csv, tmp_path)) == 0
    printed = capsys.readouterr().out
    setup = f"sudoku_{tiny_model_dir.name}_16_8"
    assert "Setup (task_model_seqlen_diffusteps)" in printed and setup in printed
    assert main(["score", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == [setup]
    assert data[setup]["total"] == 48  # 6 puzzles x 8 empty cells
    assert 0 <= data[setup]["correct"] <= 48


def test_eval_from_yaml_config(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model_path: {tiny_model_dir}\ndataset: sudoku\ndata_path: {sudoku_csv}\nsubsample: 2\n"
    )
    out = tmp_path / "out"
    args = ["eval", "--config", str(config), "--output_dir", str(out), "--model_name", "tiny", *TINY_SETTINGS]
    assert main(args) == 0
    assert len(json.loads((out / "sudoku_tiny_16_8_0_generations.json").read_text())["generations"]) == 2


def test_score_reference_files_exact(capsys) -> None:
    folder = reference_path("d1-generations")
    assert main(["score", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    got = {setup: (entry["correct"], entry["total"]) for setup, entry in data.items()}
    assert got == {
        "countdown_instruct_256_128": (7, 37),
        "gsm8k_instruct_256_128": (160, 205),
        "math500_instruct_256_128": (26, 84),
        "sudoku_instruct_256_128": (23, 296),
    }
    assert round(data["gsm8k_instruct_256_128"]["accuracy"], 2) == 78.05


def test_score_details_and_table(capsys) -> None:
    path = reference_path("d1-generations", "sudoku_instruct_256_128_0_generations.json")
    assert main(["score", str(path), "--details"]) == 0
    out = capsys.readouterr().out
    assert out.count("extracted=") == 37 and "7.77%" in out
    assert main(["score", str(path), "--json", "--details"]) == 0
    entry = json.loads(capsys.readouterr().out)["sudoku_instruct_256_128"]
    assert len(entry["items"]) == 37 and sum(item["n_correct"] for item in entry["items"]) == 23


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_score_bad_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    item = {"question": "q", "prompt_input": "p", "generations": "\\boxed{3}"}  # no ground_truth
    missing = _write(tmp_path / "gsm8k_m_16_8_0_generations.json", json.dumps({"generations": [item]}))
    assert main(["score", str(missing)]) == 1
    assert "missing key 'ground_truth'" in capsys.readouterr().err
    empty = _write(tmp_path / "gsm8k_e_16_8_0_generations.json", "")
    assert main(["score", str(empty), "--json"]) == 1
    err = capsys.readouterr().err
    assert "is empty" in err and len(err.strip().splitlines()) == 1
    assert main(["score", str(tmp_path / "nothing-here")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_eval_bad_input_is_one_line_error(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, capsys
) -> None:
    base = _eval_args(tiny_model_dir, sudoku_csv, tmp_path)
    junk = tmp_path / "junk"
    junk.mkdir()
    cases = [
        (["--dataset", "mmlu"], "unknown task 'mmlu'; known tasks"),
        (["--block_length", "5"], "must be a multiple of block_length=5"),
        (["--diffusion_steps", "7"], "diffusion_steps=7 must be a multiple of the number of blocks 2"),
        (["--checkpoint_path", str(junk)], "neither a LoRA adapter"),
        (["--data_path", str(_write(tmp_path / "empty.csv", ""))], "no test items"),
        (["--subsample", "0"], "subsample=0 must be -1 (all items) or at least 1"),
        (["--batch_size", "0"], "batch_size=0 must be at least 1"),
        (["--model_path", "./runs/tinyy"], "model_path='./runs/tinyy': no such file or folder"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err and err.startswith("d1 eval: error:"), err
    assert not list(tmp_path.glob("*_generations.json"))


def test_eval_rerun_with_other_settings_is_refused(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, capsys
) -> None:
    args = _eval_args(tiny_model_dir, sudoku_csv, tmp_path)
    assert main(args) == 0
    first = json.loads(next(tmp_path.glob("*_generations.json")).read_text())
    capsys.readouterr()
    assert main([*args, "--temperature", "0.7", "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "was written with other settings: temperature=0.0 (now 0.7), seed=42 (now 1)." in err, err
    assert "--overwrite" in err
    assert main([*args, "--temperature", "0.7", "--seed", "1", "--overwrite"]) == 0
    second = json.loads(next(tmp_path.glob("*_generations.json")).read_text())
    assert second["settings"]["temperature"] == 0.7 and first["settings"]["temperature"] == 0.0
    assert len(second["generations"]) == 6


def test_offline_hub_dataset_suggests_data_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "d1", "eval", "--dataset", "gsm8k", "--model_path", str(tiny_model_dir)]
    result = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert "d1 eval: error: Could not load 'openai/gsm8k' from the Hugging Face Hub" in result.stderr
    assert "pass --data_path FILE" in result.stderr and "columns 'question' and 'answer'" in result.stderr


def test_data_make(tmp_path: Path, capsys) -> None:
    sudoku = tmp_path / "s.csv"
    assert main(["data", "make", "sudoku", "--n", "5", "--seed", "1", "--output", str(sudoku)]) == 0
    assert (
        sudoku.read_text().splitlines()[0] == "Puzzle,Solution" and len(sudoku.read_text().splitlines()) == 6
    )
    countdown = tmp_path / "c.jsonl"
    args = ["data", "make", "countdown", "--n", "3", "--output", str(countdown), "--split", "train"]
    assert main(args) == 0
    assert set(json.loads(countdown.read_text().splitlines()[0])) == {"input", "output"}
    assert main(["data", "make", "sudoku", "--n", "0", "--output", str(sudoku)]) == 1
    assert "n must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) write rank files whose aggregate equals the single-process result.

    Launched with configs/accelerate/cpu.yaml (torchrun underneath; accelerate's `--cpu` flag would start one
    process, since its multi-CPU launcher needs MPI).
    """
    assert main(_eval_args(tiny_model_dir, sudoku_csv, tmp_path / "one")) == 0
    run_on_two_cpu_processes(*_eval_args(tiny_model_dir, sudoku_csv, tmp_path / "two"))
    rank_files = sorted(p.name for p in (tmp_path / "two").glob("*_generations.json"))
    assert [name.rsplit("_", 2)[1] for name in rank_files] == ["0", "1"]
    one, two = score_paths([tmp_path / "one"]), score_paths([tmp_path / "two"])
    json_one, json_two = scores_to_json(one), scores_to_json(two)
    (card_one,), (card_two,) = [[entry.pop("protocol_card") for entry in j.values()] for j in (json_one, json_two)]
    assert json_one == json_two
    assert {**card_one, "world_size": 2} == card_two  # the cards differ in the process count alone
    by_question = lambda scores: {i.question: i.extracted for s in scores.values() for i in s.items}  # noqa: E731
    assert by_question(one) == by_question(two)


@pytest.mark.parametrize("protocol", ["d1", "completion"])
def test_eval_and_score_humaneval_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path, protocol, capsys) -> None:
    from d1.sandbox import check_sandbox

    if check_sandbox():
        pytest.skip(f"no sandbox here: {check_sandbox()}")
    args = ["eval", "--model_path", str(tiny_model_dir), "--dataset", "humaneval", "--subsample", "3"]
    args += ["--output_dir", str(tmp_path), "--batch_size", "3", "--protocol", protocol, *TINY_SETTINGS]
    assert main(args) == 0
    capsys.readouterr()
    (path,) = tmp_path.glob("humaneval_*_0_generations.json")
    items = json.loads(path.read_text())["generations"]
    assert len(items) == 3 and all(item["ground_truth"]["task_id"].startswith("HumanEval/") for item in items)
    assert main(["score", str(tmp_path), "--json", "--details"]) == 0
    (entry,) = json.loads(capsys.readouterr().out).values()
    assert entry["total"] == 3 and entry["pass_at_k"]["pass@1"] == entry["accuracy"]
    assert entry["protocol"] == protocol and ("Codex" in entry["protocol_card"]["protocol_source"]) == (protocol == "completion")
    if protocol == "completion":  # the generation continues the prompt's function: graded as prompt + text
        assert all(item["extracted"].startswith(item["question"]) for item in entry["items"])
