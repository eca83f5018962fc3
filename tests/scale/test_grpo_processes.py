"""(b) diffu-GRPO with 2 CPU processes: the group statistics the trainer logs equal the 1-process computation
on the same rollouts, recomputed from the completions each process generated.

Each group of 4 completions spans both processes (per-device batch 2), so a wrong gather order or a
statistic computed on local rewards only would break the equality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d1.rl.advantages import group_advantages
from tests.rl.test_grpo_run import grpo_argv
from tests.scale.grpo_probe import text_reward

PROBE = Path(__file__).with_name("grpo_probe.py")


@pytest.mark.slow
def test_two_process_group_statistics_match_one_process(tiny_model_dir, tmp_path) -> None:
    argv = grpo_argv(
        tiny_model_dir, tmp_path, "--per_device_train_batch_size", "2", "--num_generations", "4",
        "--generation_batch_size", "2", "--max_steps", "2", "--num_iterations", "1", "--beta", "0.0", "--save_steps", "2",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run([*cmd, str(PROBE), *argv], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [
        [json.loads(line) for line in (tmp_path / f"probe-{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 2  # 2 steps x 2 accumulation micro-batches
    logged = [
        h
        for h in json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
        if "reward" in h
    ]
    for step, log in enumerate(logged):
        per_micro = []
        for micro in (2 * step, 2 * step + 1):
            a, b = ranks[0][micro], ranks[1][micro]
            rewards = torch.tensor([text_reward(c) for c in a["completions"] + b["completions"]])
            _, stats = group_advantages(rewards, num_generations=4)  # the 1-process computation
            assert a["gathered"] == b["gathered"] == rewards.tolist()
            assert a["stats"] == b["stats"] == stats
            per_micro.append(stats)
        for key in ("reward", "reward_std", "zero_std_ratio"):
            assert log[key] == pytest.approx(sum(s[key] for s in per_micro) / 2, abs=1e-6), key
    print({k: [h[k] for h in logged] for k in ("reward", "reward_std", "zero_std_ratio")})
