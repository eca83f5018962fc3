"""Test helper run under torchrun (2 CPU processes): each RL method of benchmarks/rl_methods.py trains 4 steps
(2 rollouts x 2 inner updates, a checkpoint every step), then again from its checkpoint-3 (between the two
inner updates of a rollout); rank 0 records whether the resumed run ends with the same weights and which
loss/metric keys it logged, in OUTPUT/methods.json."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import load_file

from benchmarks.rl_methods import METHODS
from d1.cli.main import main

# what tiny 16-token completions need on top of each method's options
SMALL = {"igpo": ["--inpaint_free_tail", "0", "--inpaint_chunk_size", "2", "4", "--inpaint_max_replacements", "2"]}


def method_argv(method: str) -> list[str]:
    options = [item for key, value in METHODS[method].options.items() for item in (f"--{key}", value)]
    # every method resumes between two inner updates here; beta 0 as in the benchmark (spg and wd1 refuse a KL)
    return [*options, "--num_iterations", "2", "--beta", "0", *SMALL.get(method, [])]


def run(argv: list[str], out: Path, method: str) -> dict:
    state = PartialState()
    main(["grpo", *argv, *method_argv(method), "--output_dir", str(out / "a"), "--save_steps", "1"])
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.copytree(out / "a" / "checkpoint-3", out / "b" / "checkpoint-3")
    state.wait_for_everyone()
    resumed = ["--output_dir", str(out / "b"), "--save_steps", "1", "--resume_from_checkpoint", "auto"]
    main(["grpo", *argv, *method_argv(method), *resumed])
    state.wait_for_everyone()
    a, b = load_file(out / "a" / "model.safetensors"), load_file(out / "b" / "model.safetensors")
    history = json.loads((out / "a" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    keys = sorted({k for h in history for k in h})
    return {"same_weights": all(torch.equal(a[k], b[k]) for k in a), "keys": keys}


if __name__ == "__main__":
    args = sys.argv[1:]
    output = Path(args[args.index("--output_dir") + 1])
    base = [a for i, a in enumerate(args) if a != "--output_dir" and (i == 0 or args[i - 1] != "--output_dir")]
    results = {method: run(base, output / method, method) for method in METHODS}
    if PartialState().is_main_process:
        (output / "methods.json").write_text(json.dumps(results, indent=1))
