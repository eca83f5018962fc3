"""`d1 grpo --config FILE.yaml [--model_path ...] [--dataset ...] [--field value ...]`: diffu-GRPO training."""

from __future__ import annotations

from d1.cli.args import parse_config
from d1.rl.config import DiffuGRPOConfig

ALIASES = {"--no-lora": "--no_lora"}


def main(argv: list[str]) -> int:
    config = parse_config(DiffuGRPOConfig, argv, ALIASES, prog="d1 grpo")
    from d1.rl.run import run_grpo
    from d1.utils import say

    trainer = run_grpo(config)
    rewards = [(h["step"], h["reward"]) for h in trainer.state.log_history if "reward" in h]
    say("step  reward\n" + "\n".join(f"{s:>4}  {r:.3f}" for s, r in rewards))
    say(f"saved to {config.output_dir}")
    return 0
