"""diffu-GRPO step time by rollout sampler: seconds per rollout, per old-log-prob pass and per update, for
`rollout_sampler` exact (LLaDA's sampler), cached (dual KV cache) and parallel (cache + threshold).

    python benchmarks/grpo_step.py [--model DIR] [--rollouts 3]

Runs `d1 grpo`'s code in this process on synthetic Sudoku prompts with the demo's RL settings (16 prompts x 8
completions, num_iterations 4, gen_length 28 in one block, 14 steps) unless flags say otherwise. Without
`--model` a random-init `small` preset is used (timings only: its rollouts are noise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from d1.cli.args import parse_config
from d1.rl.config import DiffuGRPOConfig
from d1.rl.run import run_grpo

SAMPLERS = ("exact", "cached", "parallel")


def step_times(model: str, data: str, out: Path, sampler: str, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per rollout, per old-log-prob pass (all iterations' masks) and per update step."""
    batch = args.prompts * args.num_generations
    argv = ["--model_path", model, "--output_dir", str(out), "--dataset", "sudoku", "--data_path", data,
            "--train_holdout", "0", "--system_prompt", "", "--no-lora", "--dtype", "float32",
            "--num_generations", str(args.num_generations), "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", "1", "--generation_batch_size", str(batch),
            "--num_iterations", str(args.num_iterations), "--max_completion_length", str(args.gen_length),
            "--block_length", str(args.block_length), "--diffusion_steps", str(args.diffusion_steps),
            "--temperature", "1.0", "--learning_rate", "1e-5", "--beta", "0",
            "--max_steps", str(args.rollouts * args.num_iterations), "--logging_steps", "1",
            "--save_steps", "100000", "--report_to", "none", "--log_completions", "false",
            "--disable_tqdm", "true", "--rollout_sampler", sampler]  # fmt: skip
    history = run_grpo(parse_config(DiffuGRPOConfig, argv)).state.log_history
    rollouts = [h for h in history if "time/rollout" in h][1:] or [h for h in history if "time/rollout" in h]
    updates = [h["time/update"] for h in history if "time/update" in h][1:]
    return {
        "rollout": statistics.median(h["time/rollout"] for h in rollouts),
        "old_logps": statistics.median(h["time/old_logps"] for h in rollouts),
        "update": statistics.median(updates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a d1/LLaDA model folder (default: random-init small preset)")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts per sampler (the first is warm-up)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--num_iterations", type=int, default=4)
    parser.add_argument("--gen_length", type=int, default=28)
    parser.add_argument("--block_length", type=int, default=28)
    parser.add_argument("--diffusion_steps", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from d1.models.presets import init_model
    from d1.tasks.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = args.model or str(init_model("small", root / "model", seed=0))
        data = str(
            make_dataset("sudoku", 4 * args.prompts, seed=0, output_path=root / "train.csv", split="train")
        )
        times = {s: step_times(model, data, root / s, s, args) for s in SAMPLERS}
    k = args.num_iterations
    print(
        f"\nmodel {args.model or 'small preset (random)'}; {args.prompts} prompts x {args.num_generations} "
        f"completions, gen_length {args.gen_length}, block_length {args.block_length}, {args.diffusion_steps} "
        f"steps, num_iterations {k}; torch {torch.__version__}, {torch.get_num_threads()} threads; median wall s"
    )
    print("| rollout_sampler | rollout s | old log-probs s | update s/step | s per GRPO step | vs exact |")
    print("|---|---|---|---|---|---|")
    base = None
    for sampler, t in times.items():
        per_step = (t["rollout"] + t["old_logps"]) / k + t["update"]
        base = base or per_step
        print(
            f"| {sampler} | {t['rollout']:.2f} | {t['old_logps']:.2f} | {t['update']:.2f} | {per_step:.2f} | "
            f"{base / per_step:.2f}x |"
        )


if __name__ == "__main__":
    main()
