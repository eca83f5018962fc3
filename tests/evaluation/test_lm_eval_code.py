"""d1's lm-eval code tasks (d1_humaneval, d1_humaneval_instruct, d1_mbpp): lm-eval's layouts with the tests run
in d1's sandbox, never by HF evaluate's in-process `code_eval`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from d1.cli import harness as harness_cli  # noqa: E402
from d1.evaluation.lm_eval_tasks import sandboxed  # noqa: E402
from d1.tasks.humaneval import package_rows  # noqa: E402
from tests.conftest import require_sandbox


@pytest.fixture(autouse=True)
def _sandbox() -> None:
    require_sandbox()


def test_the_metric_runs_prediction_and_tests_in_the_sandbox() -> None:
    problem = package_rows()[0]
    test = f"{problem['test']}\ncheck({problem['entry_point']})"
    (solved,) = sandboxed.build_predictions([[problem["canonical_solution"]]], [problem])
    assert sandboxed.pass_at_1([test], [solved]) == 1.0
    assert sandboxed.pass_at_1(test, [[problem["prompt"] + "    pass\n"]]) == 0.0
    early_exit = problem["prompt"] + "    import sys\n    sys.exit(0)\nimport sys\nsys.exit(0)\n"
    assert sandboxed.pass_at_1([test], [[early_exit]]) == 0.0  # exit status 0, but the tests never ran


def test_predictions_are_built_as_lm_eval_builds_them() -> None:
    doc = {"prompt": "def f():\n"}
    assert sandboxed.build_predictions([["    return 1<|endoftext|>junk"]], [doc]) == [
        ["def f():\n    return 1"]
    ]
    instruct = sandboxed.build_predictions_instruct([["    return 2\n```\nprose"]], [doc])
    assert instruct == [["def f():\n    return 2\n"]]
    shots = sandboxed.list_fewshot_samples()
    assert [len(s["test_list"]) for s in shots] == [3, 3, 3] and all(s["is_fewshot"] for s in shots)


def test_d1s_code_tasks_are_indexed_and_run_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = Path(harness_cli.LM_EVAL_TASKS)
    assert not any("unsafe_code" in path.read_text() for path in folder.glob("*.yaml"))
    (tmp_path / "he.jsonl").write_text("".join(json.dumps(row) + "\n" for row in package_rows()[:2]))
    (tmp_path / "he.yaml").write_text(  # d1_humaneval on a local copy of two problems (the tests run offline)
        f"include: {folder / 'd1_humaneval.yaml'}\ntask: local_humaneval\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'he.jsonl'}\n"
    )
    argv = ["--model_path", str(tiny_model_dir), "--tasks", "local_humaneval", "--include_path", str(tmp_path),
            "--model_args", "gen_length=8,block_length=8,steps=4", "--device", "cpu", "--output_path",
            str(tmp_path / "out")]  # fmt: skip
    assert harness_cli.main(argv) == 0
    manager = harness_cli.task_manager(str(tmp_path))  # the index main built (cached): d1's tasks are in it
    assert {"d1_humaneval", "d1_humaneval_instruct", "d1_mbpp", "local_humaneval"} <= set(manager.all_tasks)
    (path,) = (tmp_path / "out").rglob("results_*.json")
    result = json.loads(path.read_text())["results"]["local_humaneval"]
    assert result["pass_at_1,create_test"] == 0.0  # a random tiny model; the metric ran (1.0 above)
