"""Test helper run under torchrun: `d1 grpo` with a reward computed from each completion's text (so a test
can recompute it from the saved completions) and every rollout's completions, rewards and group statistics
recorded per rank in OUTPUT/probe-RANK.jsonl."""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import torch

import d1.rl.trainer
from d1.cli.main import main


def text_reward(completion: str) -> float:
    """A reward that varies between completions of one prompt: 0, 0.5 or 1 from a checksum of the text."""
    return (zlib.crc32(completion.encode()) % 3) / 2


def probe(output_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    log = Path(output_dir) / f"probe-{rank}.jsonl"
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    calls: dict = {}

    def score(reward_funcs, prompts, completions, columns):
        calls["completions"] = completions
        return torch.tensor([[text_reward(c)] * len(reward_funcs) for c in completions])

    real_stats = d1.rl.trainer.group_advantages

    def stats(rewards, num_generations, *options):
        advantages, values = real_stats(rewards, num_generations, *options)
        with log.open("a") as f:
            record = {"completions": calls["completions"], "gathered": rewards.tolist(), "stats": values}
            f.write(json.dumps(record) + "\n")
        return advantages, values

    d1.rl.trainer.score_completions = score
    d1.rl.trainer.group_advantages = stats


if __name__ == "__main__":
    args = sys.argv[1:]
    probe(args[args.index("--output_dir") + 1])
    sys.exit(main(["grpo", *args]))
