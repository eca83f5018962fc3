"""The recipe matrix on CPU: every documented training recipe that can run without CUDA (docs/cluster.md,
"Recipe matrix"), on 2 gloo processes with the tiny model for 2 optimizer steps, through the GPU recipe's
code path: diffu-GRPO with LoRA on the default targets, gradient checkpointing on, the k-bit preparation
(4-bit flag emulated), the reference policy as the disabled adapter, beta > 0 and 0, num_iterations 1 and
4; masked SFT with LoRA and full. All cells run one after another in one torchrun launch
(tests/scale/recipe_probe.py) to pay the start-up once.

Each cell: finite losses; at every optimizer step, on every rank, every trainable parameter has a finite
gradient; every one has a non-zero gradient at some step; both ranks hold identical trainable parameters
after every step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rl.test_grpo_run import grpo_argv
from tests.sft.test_sft_run import sft_argv

PROBE = Path(__file__).with_name("recipe_probe.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 2


def grpo_cell(model_dir: Path, out: Path, beta: str, mu: str) -> dict:
    argv = grpo_argv(
        model_dir, out / f"grpo-beta{beta}-mu{mu}", "--lora", "--lora_r", "4", "--lora_alpha", "8",
        "--gradient_checkpointing", "true", "--per_device_train_batch_size", "2", "--num_generations", "4",
        "--generation_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", str(STEPS),
        "--num_iterations", mu, "--beta", beta,
    )  # fmt: skip
    return {"name": f"grpo-lora-4bit-beta{beta}-mu{mu}", "command": "grpo", "argv": argv}


def sft_cell(model_dir: Path, data: Path, out: Path, lora: bool) -> dict:
    kind = "lora" if lora else "full"
    argv = sft_argv(
        model_dir, data, out / f"sft-{kind}", "--max_steps", str(STEPS), "--batch_size", "4",
        "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "true",
        *(["--lora", "--lora_r", "4", "--lora_alpha", "8"] if lora else []),
    )  # fmt: skip
    return {"name": f"sft-{kind}", "command": "sft", "argv": argv}


@pytest.mark.slow
def test_recipe_matrix_on_two_cpu_processes(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    cells = [grpo_cell(tiny_model_dir, tmp_path, beta, mu) for beta in ("0.04", "0.0") for mu in ("1", "4")]
    cells += [sft_cell(tiny_model_dir, arithmetic_jsonl, tmp_path, lora) for lora in (True, False)]
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    result = subprocess.run(
        [*cmd, str(PROBE), str(tmp_path / "cells.json"), str(tmp_path)],
        capture_output=True, text=True, timeout=420, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for cell in cells:
        ranks = [json.loads((tmp_path / f"{cell['name']}-{r}.json").read_text()) for r in (0, 1)]
        for record in ranks:
            assert len(record["losses"]) == STEPS and all(math.isfinite(x) for x in record["losses"]), cell["name"]
            assert len(record["steps"]) == STEPS and record["activation_checkpointing"], cell["name"]
            for step in record["steps"]:
                assert step["trainable"] > 0 and not step["missing"] and not step["nonfinite"], (cell["name"], step)
        for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
            assert a["checksum"] == b["checksum"], cell["name"]  # the ranks agree after every step
        trainable = ranks[0]["steps"][0]["trainable"]
        ever_nonzero = {n for record in ranks for step in record["steps"] for n in step["nonzero"]}
        assert len(ever_nonzero) == trainable, (cell["name"], trainable - len(ever_nonzero))
        print(
            f"{cell['name']}: losses {ranks[0]['losses']}, {trainable} trainable tensors, "
            f"{ranks[0]['seconds']:.1f} s, find_unused_parameters={ranks[0]['ddp_find_unused_parameters']}"
        )
