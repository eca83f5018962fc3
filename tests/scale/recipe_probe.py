"""Test helper run under torchrun: the recipe-matrix cells (`d1 sft` / `d1 grpo` configurations) one after
another in one 2-process launch, each recording per rank in OUTPUT/<cell>-RANK.json the logged losses, which
trainable parameters had a gradient (present, non-zero, finite) at each optimizer step, and a checksum of the
trainable parameters after each step. GRPO cells emulate the 4-bit flag (bitsandbytes needs CUDA) so that
`apply_lora` takes the k-bit preparation path, and reward each completion from its text (varied rewards)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import d1.models.loading
import d1.rl.run
import d1.rl.trainer
import d1.sft.run
from d1.cli.args import parse_config
from d1.cli.grpo import ALIASES as GRPO_ALIASES
from d1.cli.sft import ALIASES as SFT_ALIASES
from d1.rl.config import DiffuGRPOConfig
from d1.sft.config import SFTConfig
from d1.utils import shutdown_distributed
from tests.scale.grpo_probe import text_reward

RANK = int(os.environ.get("RANK", "0"))


class GradientProbe(TrainerCallback):
    """Records, per optimizer step, the trainable parameters without a gradient, with a non-zero one and
    with a non-finite one, and a checksum of the trainable parameters after the step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.steps.append(
            {
                "trainable": len(trainable),
                "missing": [n for n, p in trainable if p.grad is None],
                "nonzero": [n for n, p in trainable if p.grad is not None and bool(p.grad.abs().sum() > 0)],
                "nonfinite": [n for n, p in trainable if p.grad is not None and not bool(p.grad.isfinite().all())],
            }
        )

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        digest = hashlib.sha256()
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            digest.update(p.detach().float().contiguous().numpy().tobytes())
        self.steps[-1]["checksum"] = digest.hexdigest()


def run_cell(name: str, command: str, argv: list[str], output: Path) -> None:
    probe = GradientProbe()
    module = d1.sft.run if command == "sft" else d1.rl.run
    real_train_and_save = module.train_and_save

    def train_and_save(trainer, resume):
        trainer.add_callback(probe)
        real_train_and_save(trainer, resume)

    module.train_and_save = train_and_save
    start = time.perf_counter()
    if command == "sft":
        trainer = d1.sft.run.run_sft(parse_config(SFTConfig, argv, SFT_ALIASES))
    else:
        trainer = d1.rl.run.run_grpo(parse_config(DiffuGRPOConfig, argv, GRPO_ALIASES))
    module.train_and_save = real_train_and_save
    record = {
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "steps": probe.steps,
        "seconds": time.perf_counter() - start,
        "activation_checkpointing": bool(trainer.accelerator.unwrap_model(trainer.model).is_activation_checkpointing),
        "ddp_find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
    }
    (output / f"{name}-{RANK}.json").write_text(json.dumps(record))


FAKE_4BIT = {"on": False}


def emulate_4bit() -> None:
    """`load_model` marks the model 4-bit while FAKE_4BIT is on (the GRPO cells: d1's 4-bit + LoRA recipe)."""
    real = d1.models.loading.load_model

    def load(*args, **kwargs):
        model = real(*args, **kwargs)
        model.is_loaded_in_4bit = FAKE_4BIT["on"]
        return model

    d1.models.loading.load_model = load


def text_rewards() -> None:
    def score(reward_funcs, prompts, completions, columns):
        return torch.tensor([[text_reward(c)] * len(reward_funcs) for c in completions])

    d1.rl.trainer.score_completions = score


if __name__ == "__main__":
    cells_file, output = Path(sys.argv[1]), Path(sys.argv[2])
    emulate_4bit()
    text_rewards()
    for cell in json.loads(cells_file.read_text()):
        FAKE_4BIT["on"] = cell["command"] == "grpo"
        run_cell(cell["name"], cell["command"], cell["argv"], output)
    shutdown_distributed()
