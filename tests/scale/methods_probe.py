"""Test helper run under torchrun (2 CPU processes): each RL method of benchmarks/rl_methods.py trains 4 steps
(2 rollouts x 2 inner updates, a checkpoint every step), then again from its checkpoint-3 (between the two
inner updates of a rollout); rank 0 records whether the resumed run ends with the same weights, the logged
keys, gradient norms and rewards, in OUTPUT/methods.json. The tiny model never solves a Sudoku, so the
rewards come from the completion's text (grpo_probe.text_reward), except for IGPO, whose hints (the whole
reference) earn the real Sudoku reward.

With PROBE_TRAIN=<method> (any of benchmarks/rl_methods.py's ALL_METHODS) it instead trains that method once
with the given flags, `--output_dir` included, for a test that kills the run and resumes it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from benchmarks.rl_methods import METHODS, method_flags
from safetensors.torch import load_file

import d1.rl.trainer
from d1.cli.args import parse_config
from d1.cli.grpo import ALIASES
from d1.rl.config import DiffuGRPOConfig
from d1.rl.run import run_grpo
from d1.utils import shutdown_distributed
from tests.scale.grpo_probe import text_reward

# what the tiny runs need on top of each method's options: IGPO reveals the whole reference (in 32 tokens)
SMALL = {
    "igpo": [
        "--inpaint_free_tail", "0", "--inpaint_chunk_size", "1", "1", "--inpaint_fraction", "1", "1",
        "--inpaint_max_replacements", "2", "--max_completion_length", "32",
    ]
}  # fmt: skip
REAL_SCORE = d1.rl.trainer.score_completions


def text_scores(reward_funcs, prompts, completions, columns) -> torch.Tensor:
    return torch.tensor([[text_reward(c)] * len(reward_funcs) for c in completions])


def method_argv(method: str) -> list[str]:
    options = method_flags(method)
    # every method resumes between two inner updates here; beta 0 as in the benchmark (spg and wd1 refuse a KL)
    return [*options, "--num_iterations", "2", "--beta", "0", *SMALL.get(method, [])]


def train(argv: list[str], method: str) -> None:
    d1.rl.trainer.score_completions = REAL_SCORE if method == "igpo" else text_scores
    run_grpo(parse_config(DiffuGRPOConfig, argv, ALIASES))  # not `d1 grpo`, which ends the process group


def run(argv: list[str], out: Path, method: str) -> dict:
    state = PartialState()
    train([*argv, *method_argv(method), "--output_dir", str(out / "a"), "--save_steps", "1"], method)
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.copytree(out / "a" / "checkpoint-3", out / "b" / "checkpoint-3")
    state.wait_for_everyone()
    resumed = ["--output_dir", str(out / "b"), "--save_steps", "1", "--resume_from_checkpoint", "auto"]
    train([*argv, *method_argv(method), *resumed], method)
    state.wait_for_everyone()
    a, b = load_file(out / "a" / "model.safetensors"), load_file(out / "b" / "model.safetensors")
    history = json.loads((out / "a" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return {
        "same_weights": all(torch.equal(a[k], b[k]) for k in a),
        "keys": sorted({k for h in history for k in h}),
        "grad_norms": [h["grad_norm"] for h in history if "grad_norm" in h],
        "rewards": [h["reward"] for h in history if "reward" in h],
    }


if __name__ == "__main__" and os.environ.get("PROBE_TRAIN"):
    train([*sys.argv[1:], *method_argv(os.environ["PROBE_TRAIN"])], os.environ["PROBE_TRAIN"])
    shutdown_distributed()
elif __name__ == "__main__":
    args = sys.argv[1:]
    output = Path(args[args.index("--output_dir") + 1])
    base = [a for i, a in enumerate(args) if a != "--output_dir" and (i == 0 or args[i - 1] != "--output_dir")]
    results = {method: run(base, output / method, method) for method in METHODS}
    if PartialState().is_main_process:
        (output / "methods.json").write_text(json.dumps(results, indent=1))
    shutdown_distributed()
