"""`d1 eval --sampler dream`: Dream's diffusion_generate in the eval runner, and each sampler's options refused
with the other sampler before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.evaluation import runner
from d1.evaluation.runner import EvalConfig, run_eval
from d1.tasks.synthetic import make_dataset


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
    assert data["settings"]["dream"] == {"alg": "topk_margin", "alg_temp": None, "top_p": 0.9, "top_k": None}
    assert data["metrics"]["forward_passes"] == 12 and len(data["generations"]) == 3


def test_llada_sampler_settings_unchanged(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    """Files written before --sampler existed still resume: the block sampler records no new keys."""
    path = run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, block_length=4))
    assert "dream" not in json.loads(path.read_text())["settings"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sampler": "dream", "block_length": 4},
            r"--block_length 4: option\(s\) of --sampler llada.*pass --sampler llada",
        ),
        ({"sampler": "dream", "remasking": "random"}, r"--remasking random: option\(s\) of --sampler llada"),
        ({"sampler": "dream", "cache": "dual"}, r"--cache dual: option\(s\) of --sampler llada"),
        ({"alg": "entropy"}, r"--alg entropy: option\(s\) of --sampler dream.*pass --sampler dream"),
        ({"top_p": 0.9, "top_k": 5}, r"--top_p 0.9, --top_k 5: option\(s\) of --sampler dream"),
        ({"sampler": "dream", "alg": "low_confidence"}, "alg='low_confidence' is unknown"),
        ({"sampler": "dream", "top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"sampler": "fast"}, r"sampler='fast' is unknown; use one of \('llada', 'dream'\)"),
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
