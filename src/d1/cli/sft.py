"""`d1 sft`: masked SFT with d1's flags (`--model_path` (d1's `--model_name` works too) `--batch_size --max_length --num_epochs --learning_rate
--grad_accum_steps --output_dir --job_name --train_data --debugging`) and any TrainingArguments field."""

from __future__ import annotations

from d1.cli.args import parse_config
from d1.sft.config import SFTConfig

ALIASES = {
    "--batch_size": "--per_device_train_batch_size",
    "--num_epochs": "--num_train_epochs",
    "--grad_accum_steps": "--gradient_accumulation_steps",
    "--no-lora": "--no_lora",
}


def main(argv: list[str]) -> int:
    config = parse_config(SFTConfig, argv, ALIASES, prog="d1 sft")
    from d1.sft.run import loss_table, run_sft
    from d1.utils import say

    trainer = run_sft(config)
    say(loss_table(trainer.state.log_history))
    say(f"saved to {config.output_dir}")
    return 0
