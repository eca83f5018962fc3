"""Kill-anywhere for `d1 eval`: kill -9 a real run at seeded random moments, resume each time, and end with
the same generation file as an uninterrupted run (same generations, same order)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d1.tasks.synthetic import make_dataset

KILLS = 7
ITEMS = 24
SETTINGS = ["--gen_length", "32", "--block_length", "8", "--diffusion_steps", "16", "--batch_size", "1"]


def _command(model: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "d1", "eval", "--model_path", str(model), "--dataset", "sudoku",
        "--data_path", str(data), "--output_dir", str(out), "--model_name", "tiny", "--temperature", "0.7",
        "--system_prompt", "", *SETTINGS,
    ]  # fmt: skip


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["generations"] if path.exists() else []


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_eval_killed_anywhere_resumes_to_the_uninterrupted_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = make_dataset("sudoku", ITEMS, 0, tmp_path / "sudoku.csv")
    reference_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(tiny_model_dir, data, reference_dir), check=True, env=_env(), capture_output=True)
    (reference,) = reference_dir.glob("*_generations.json")
    expected = _records(reference)
    assert len(expected) == ITEMS

    path = killed_dir / reference.name
    rng = random.Random(15)
    tally = {"before generation": 0, "during generation": 0}
    while sum(tally.values()) < KILLS:
        before = len(_records(path))
        process = subprocess.Popen(
            _command(tiny_model_dir, data, killed_dir), env=_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if rng.random() < 0.25:  # anywhere from the start: mostly during imports or loading
            time.sleep(rng.uniform(0.0, 3.0))
        else:  # once this run has saved a batch or two: mid-generation, or mid-save
            target = before + rng.randint(1, 2)
            deadline = time.monotonic() + 120
            while process.poll() is None and len(_records(path)) < target and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.01))
        if process.poll() is not None:
            break  # finished before the kill landed
        process.kill()
        process.wait()
        records = _records(path)  # readable after every kill: the file is replaced atomically
        assert records == expected[: len(records)]
        tally["during generation" if len(records) > before else "before generation"] += 1
        assert len(records) < ITEMS, "the run finished before the kill; use more items"
    result = subprocess.run(_command(tiny_model_dir, data, killed_dir), env=_env(), capture_output=True)
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"eval kill-anywhere tally: {tally}")
    assert sum(tally.values()) == KILLS and tally["during generation"] >= KILLS // 2
    assert _records(path) == expected
    assert not list(killed_dir.glob(".*.tmp"))
