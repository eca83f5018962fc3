"""`d1 eval --sampler dream`: Dream's diffusion_generate in the eval runner, files recording only the chosen
sampler's options, and each sampler's options refused with the other sampler before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.evaluation import runner
from d1.evaluation.config import EvalConfig
from d1.evaluation.runner import run_eval
from d1.tasks.synthetic import make_dataset
from tests.conftest import assert_harness_answers_as_eval


@pytest.fixture(scope="module")
def sudoku_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("sudoku", 3, 0, tmp_path_factory.mktemp("data") / "sudoku.csv")


def _config(model_dir: Path, data: Path, out: Path, **overrides) -> EvalConfig:
    values = {
        "model_path": str(model_dir),
        "dataset": "sudoku",
        "data_path": str(data),
        "output_dir": str(out),
    }
    return EvalConfig(**{**values, "gen_length": 12, "diffusion_steps": 6, "batch_size": 2, **overrides})


def test_dream_sampler_writes_its_settings(tiny_dream_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    path = run_eval(
        _config(tiny_dream_dir, sudoku_csv, tmp_path, sampler="dream", alg="topk_margin", top_p=0.9)
    )
    data = json.loads(path.read_text())
    settings = data["settings"]
    assert settings["sampler"] == "dream" and (settings["alg"], settings["top_p"], settings["top_k"]) == (
        "topk_margin", 0.9, None,
    )  # fmt: skip
    assert not {"block_length", "remasking", "cache", "unmask", "early_stop"} & set(settings)
    assert "block_length" not in data and data["diffusion_steps"] == 6
    assert data["metrics"]["forward_passes"] == 12 and len(data["generations"]) == 3


def test_llada_file_records_only_its_sampler(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    settings = json.loads(run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, block_length=4)).read_text())["settings"]
    assert settings["sampler"] == "llada" and settings["block_length"] == 4 and settings["cache"] is None
    assert not {"alg", "alg_temp", "top_p", "top_k", "eps"} & set(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sampler": "dream", "block_length": 4},
            r"block_length=4: option\(s\) of sampler\(s\) \['block_diffusion', 'fastdllm_dream', 'llada'\], which sampler='dream' does not read",
        ),
        ({"sampler": "dream", "remasking": "random"}, r"remasking='random': option\(s\) of sampler\(s\) \['llada'\]"),
        ({"sampler": "dream", "cache": "dual"}, r"cache='dual': option\(s\) of sampler\(s\) \['fastdllm_dream', 'llada'\]"),
        ({"alg": "maskgit_plus"}, r"alg='maskgit_plus': option\(s\) of sampler\(s\) \['dream', 'fastdllm_dream'\].*choose one"),
        ({"top_p": 0.9, "top_k": 5}, r"top_p=0.9, top_k=5: option\(s\) of sampler\(s\) \['block_diffusion', 'dream', 'fastdllm_dream'\]"),
        ({"sampler": "dream", "alg": "low_confidence"}, "alg='low_confidence' is unknown"),
        ({"sampler": "dream", "top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"sampler": "fast"}, r"sampler='fast' is unknown; use one of \['block_diffusion', 'dream', 'fastdllm_dream', 'llada'\]"),
    ],
)
def test_sampler_option_mismatch_refused_before_loading(
    tiny_dream_dir: Path,
    sudoku_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides,
    message,
) -> None:
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
    with pytest.raises(ValueError, match=message):
        run_eval(_config(tiny_dream_dir, sudoku_csv, tmp_path, **overrides))


DREAM_SAMPLERS = {"dream": {}, "fastdllm_dream": {"block_length": 6, "cache": "dual"}}
"""Dream's own sampler and Fast-dLLM's cached one, with the options the tiny runs need."""


@pytest.mark.parametrize("sampler", sorted(DREAM_SAMPLERS))
def test_dream_runs_are_traced_and_replayed(
    tiny_dream_dir: Path, sudoku_csv: Path, tmp_path: Path, sampler: str
) -> None:
    """`--save_traces` with each Dream sampler: every completion position decided once, and `d1 trace` turns
    the file into its page."""
    from d1.diffusion.trace import row_from_dict
    from d1.evaluation.traces import read_traces, traces_path
    from d1.viz.html import write_trace_html

    overrides = {"sampler": sampler, "save_traces": 2, **DREAM_SAMPLERS[sampler]}
    path = run_eval(_config(tiny_dream_dir, sudoku_csv, tmp_path, **overrides))
    items = read_traces(traces_path(path))
    assert len(items) == 2
    for item in items:
        row = row_from_dict(item["trace"])
        assert sampler != "dream" or len(row.steps) == 6
        decided = sorted(p for step in row.steps for p in step.positions)
        assert decided == list(range(12))
    settings = json.loads(path.read_text())["settings"]
    assert settings["sampler"] == sampler and "remasking" not in settings
    page = write_trace_html(traces_path(path), tmp_path / "trace.html")
    assert f"d1 trace: {traces_path(path).name}" in page.read_text()


@pytest.mark.parametrize("sampler", sorted(DREAM_SAMPLERS))
def test_dream_samplers_in_the_harness_answer_as_eval(tiny_dream_dir: Path, sampler: str) -> None:
    """`d1 harness --model_args sampler=dream,...` decodes with that sampler, as `d1 eval` does."""
    from d1.evaluation.harness import D1HarnessLM

    extra = {"block_length": "4", "cache": "dual"} if sampler == "fastdllm_dream" else {}
    lm = D1HarnessLM(
        pretrained=str(tiny_dream_dir), device="cpu", batch_size=2, seed=3, sampler=sampler, gen_length="8",
        steps="4", alg="maskgit_plus", temperature="0.7", **extra,
    )  # fmt: skip
    assert (lm.sampler.name, lm.sampler.gen_length, lm.sampler.steps, lm.sampler.alg) == (sampler, 8, 4, "maskgit_plus")
    assert lm.settings()["sampler"] == sampler and "remasking" not in lm.settings()
    assert_harness_answers_as_eval(lm)
