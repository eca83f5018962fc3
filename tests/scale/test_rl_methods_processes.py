"""Every RL method (benchmarks/rl_methods.py's METHODS) trains with 2 CPU processes (gradients non-zero at every
update) and, stopped between two inner updates of a rollout, resumes to exactly the weights of the
uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.rl_methods import METHODS

from tests.rl.test_grpo_run import grpo_argv

PROBE = Path(__file__).with_name("methods_probe.py")


@pytest.mark.slow
def test_every_method_trains_on_two_processes_and_resumes_exactly(tiny_model_dir, tmp_path) -> None:
    # per-device batch 4 with groups of 4: wd1 needs whole groups per process; spans are covered elsewhere
    argv = grpo_argv(
        tiny_model_dir, tmp_path, "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--generation_batch_size", "4", "--gradient_accumulation_steps", "1",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "methods.json").read_text())
    assert set(results) == set(METHODS)
    assert {m for m, r in results.items() if not r["same_weights"]} == set()
    assert {m for m, r in results.items() if min(r["grad_norms"]) <= 0} == set()  # every update learned
    assert results["igpo"]["rewards"][0] > 0  # the tiny model alone earns 0: the hinted rows were swapped in
    assert all("clip_ratio" in results[m]["keys"] for m in ("d1", "espo", "justgrpo"))
    assert "clip_ratio" not in results["wd1"]["keys"] and "clip_ratio" not in results["spg"]["keys"]
    assert "inpaint/zero_signal_groups" in results["igpo"]["keys"]
