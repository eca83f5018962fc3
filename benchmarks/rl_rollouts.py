"""Fast rollouts inside RL: the demo's d1 stage with exact, dual-cache and dual-cache + threshold rollouts.

    d1 demo --seed S --output_dir runs/demo-sS --stop_after sft        # for S in 0 1 2: the SFT checkpoints
    python -m benchmarks.rl_rollouts --demos runs/demo-s0 runs/demo-s1 runs/demo-s2 --out runs/rl_rollouts

Each mode runs the demo's own diffu-GRPO stage (`demo/pipeline.py: grpo_argv`: its puzzles, rewards, estimator,
learning rate and budget of `--rollouts` rollouts) from the demo's SFT model in a fresh `d1 grpo` process, with
only the rollout sampler changed (`MODES`). Validation every `--eval_every` rollouts picks the checkpoint whose
test accuracy is reported, at equal rollouts and within the training time of the fastest mode (equal wall
time). Fast-dLLM's threshold decoding was seen to destabilise online RL (d1 issue #25: overconfident logits,
steps committing ever more tokens), so the table also follows the tokens each forward pass commits
(`rollout/tokens_per_pass`) and the reward from the first rollouts to the last; `curves.png` plots both.
Runs are cached per folder (`<out>/<mode>/seed<S>/`), so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.rl_methods import (
    Run,
    best_checkpoint,
    cost,
    demo_config,
    run_argv,
    run_grpo_process,
    setting_data,
    spread,
    test_accuracy,
    timeline,
)

MODES = {
    "exact": {"cache": "none", "unmask": "schedule"},
    "dual": {"cache": "dual", "unmask": "schedule"},
    "dual_threshold": {"cache": "dual", "unmask": "threshold"},
}
"""Rollout sampler options of each mode (LLaDA's sampler): exact decoding (LLaDA's loop), Fast-dLLM's dual
cache with the schedule's token counts (the demo's `cached`), and dual cache + confidence threshold (0.9)."""


def mode_flags(mode: str) -> list[str]:
    return [item for key, value in MODES[mode].items() for item in (f"--{key}", value)]


def train(run: Run, args: argparse.Namespace) -> dict:
    """The demo's RL stage with the mode's rollout sampler (its `rollout_sampler` shorthand dropped)."""
    config, data = setting_data(run, args.out)
    config.rollout_sampler = None
    iterations = config.num_iterations
    argv = run_argv(config, data, run, args.rollouts * iterations, args.eval_every * iterations, iterations)
    return run_grpo_process(run, argv + mode_flags(run.method), iterations, args.threads)


def series(result: dict, key: str) -> list[float]:
    """One logged value per rollout (logs are written once a rollout)."""
    return [entry[key] for entry in result["log_history"] if key in entry]


def _ends(values: list[float], n: int = 5) -> str:
    return f"{statistics.mean(values[:n]):.2f} -> {statistics.mean(values[-n:]):.2f}"


def report(runs: list[Run], results: dict, args: argparse.Namespace) -> str:
    """The table: per mode, test cells/solved gains over SFT (mean [min, max] over seeds) at equal rollouts and
    equal wall time, training seconds (and speed against the first mode), and the reward and tokens per pass from the first rollouts to the last."""
    seeds = sorted({r.seed for r in runs})
    budget = {s: min(timeline(results[(m, s)])[-1]["seconds"] for m in args.modes) for s in seeds}
    sft = {r.seed: test_accuracy(r, str(r.demo / "models" / "sft"), "sft", args) for r in runs}
    lines = [
        f"| rollouts ({args.rollouts}) | test cells d, equal rollouts | solved d | cells d, equal wall time | "
        f"solved d | training s (x {args.modes[0]}) | s per rollout: generate + log-probs + update | reward, first -> last "
        "5 rollouts | tokens per pass, first -> last 5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first_s = statistics.mean(timeline(results[(args.modes[0], s)])[-1]["seconds"] for s in seeds)
    for mode in args.modes:
        deltas: dict[str, list[float]] = {"cells": [], "solved": [], "cells_t": [], "solved_t": []}
        mine = [r for r in runs if r.method == mode]
        for run in mine:
            for suffix, limit in (("", None), ("_t", budget[run.seed])):
                step, model = best_checkpoint(run, results[(mode, run.seed)], limit)
                score = test_accuracy(run, model, f"rollouts-{mode}-s{run.seed}-{step}", args)
                deltas["cells" + suffix].append(score["accuracy"] - sft[run.seed]["accuracy"])
                deltas["solved" + suffix].append(score["solved"] - sft[run.seed]["solved"])
        mode_results = [results[(mode, r.seed)] for r in mine]
        seconds = statistics.mean(timeline(r)[-1]["seconds"] for r in mode_results)
        costs = [cost(r) for r in mode_results]
        c = {k: statistics.mean(x[k] for x in costs) for k in costs[0]}
        rewards = [statistics.mean(v) for v in zip(*(series(r, "reward") for r in mode_results), strict=False)]
        tokens = [
            statistics.mean(v) for v in zip(*(series(r, "rollout/tokens_per_pass") for r in mode_results), strict=False)
        ]
        lines.append(
            f"| {mode} | {spread(deltas['cells'])} | {spread(deltas['solved'])} | {spread(deltas['cells_t'])} | "
            f"{spread(deltas['solved_t'])} | {seconds:.0f} ({first_s / seconds:.2f}x) | "
            f"{c['rollout']:.1f} + {c['old_logps']:.1f} + {c['update']:.1f} | {_ends(rewards)} | {_ends(tokens)} |"
        )
    lines.append(
        "\nSFT test cells % per seed: "
        + ", ".join(f"seed {s}: {v['accuracy']:.1f} ({v['solved']:.1f} solved)" for s, v in sorted(sft.items()))
    )
    lines.append("Equal wall time budget per seed (s): " + ", ".join(f"{s}: {b:.0f}" for s, b in sorted(budget.items())))
    return "\n".join(lines)


def plot(runs: list[Run], results: dict, args: argparse.Namespace) -> Path:
    """curves.png: the rollout reward and the tokens per forward pass over training, one line per mode and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for index, mode in enumerate(args.modes):
        for run in (r for r in runs if r.method == mode):
            result = results[(mode, run.seed)]
            label = mode if run.seed == runs[0].seed else None
            left.plot(series(result, "reward"), color=f"C{index}", alpha=0.7, label=label)
            right.plot(series(result, "rollout/tokens_per_pass"), color=f"C{index}", alpha=0.7, label=label)
    left.set(xlabel="rollout", ylabel="mean rollout reward", title="Reward")
    right.set(xlabel="rollout", ylabel="tokens committed per forward pass", title="Tokens per pass (d1 #25)")
    left.legend()
    fig.tight_layout()
    path = args.out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", type=Path, nargs="+", required=True, help="d1 demo folders (one per seed).")
    parser.add_argument("--out", type=Path, default=Path("runs/rl_rollouts"))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--rollouts", type=int, default=40, help="Rollouts per run (the demo's d1 stage: 40).")
    parser.add_argument("--eval_every", type=int, default=10, help="Rollouts between validations (the demo's).")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained at the same time.")
    args = parser.parse_args()
    seeds = {}
    for demo in args.demos:
        if not (demo / "models" / "sft").is_dir():
            parser.error(f"--demos {demo}: no SFT model there; run `d1 demo --output_dir {demo} --stop_after sft`.")
        config = demo_config(demo)
        if config.block_diffusion:
            parser.error(f"--demos {demo}: a block-diffusion demo; the modes are LLaDA sampler's caches.")
        seeds[demo] = config.seed
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [Run(demo, seed, "easy", mode, args.out / mode / f"seed{seed}") for demo, seed in seeds.items() for mode in args.modes]
    for run in runs:  # the data files first, once, before runs share them
        setting_data(run, args.out)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:
        trained = list(pool.map(lambda r: train(r, args), runs))
    results = {(r.method, r.seed): result for r, result in zip(runs, trained, strict=True)}
    table = report(runs, results, args)
    print(table + f"\n\ncurves: {plot(runs, results, args)}")
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
