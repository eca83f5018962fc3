"""The field's RL methods for diffusion LLMs side by side: same SFT checkpoints, data, seeds and budget.

    d1 demo --seed S --output_dir runs/demo-sS --stop_after sft        # for S in 0 1 2: the SFT checkpoints
    python benchmarks/rl_methods.py --demos runs/demo-s0 runs/demo-s1 runs/demo-s2 --out runs/rl_methods

Every method runs `d1 grpo` (a fresh process each, one CPU thread) from the demo's SFT model with the demo's RL
budget (16 puzzles x 8 completions per rollout, `--rollouts` rollouts, the same puzzles in the same order), by
default on two settings: `easy` (the demo's RL puzzles, 2-6 blanks, solved-or-not reward) and `d1` (d1's
own: 8 blanks, d1's cell-fraction reward); `--settings mixed hard` puts 2-8 or 4-8 blanks in the RL puzzles.
The demo's own RL stage is `--methods coupled_pos --rollouts 40 --eval_every 10 --learning_rate 2e-4`.
Validation (100 held-out 8-blank puzzles, greedy) every `--eval_every` rollouts; the test accuracy (200 unseen
puzzles, cells % and solved %) is measured at the best-validation checkpoint after the same number of rollouts
(equal rollouts) and, separately, at the best-validation checkpoint reached within the training time of the
fastest method (equal wall time; validation time not counted). Also: seconds per rollout
split into generation, log-prob passes and updates, and each run's peak memory. Results are cached per run
(`<out>/<setting>/<method>/seed<S>/`), so an interrupted benchmark continues where it stopped.

On demos of a block-diffusion family (LLaDA 2.x, SDAR) the methods are BLOCK_METHODS (block_elbo with
grpo_clip, espo and spg; trajectory with grpo_clip); a full-attention method is refused there before any
training, as `d1 grpo` refuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from d1.demo.config import DemoConfig
from d1.demo.data import make_demo_data
from d1.demo.pipeline import _chat_renderer, grpo_argv, test_scores


@dataclass(frozen=True)
class Method:
    """A published RL method as `d1 grpo` options (docs/rl-methods.md has each one's paper and formula)."""

    paper: str
    options: dict[str, str] = field(default_factory=dict)


METHODS = {
    "d1": Method("diffu-GRPO (d1, arXiv 2504.12216)", {"logp_estimator": "one_step"}),
    "coupled": Method("coupled-GRPO (DiffuCoder, arXiv 2506.20639)", {"logp_estimator": "coupled"}),
    "coupled_pos": Method(
        "this repo's tiny recipe: coupled, positive advantages only (docs/rl-at-tiny-scale.md)",
        {"logp_estimator": "coupled", "negative_advantage_scale": "0"},
    ),
    "espo": Method(
        "ESPO (arXiv 2512.03759)",
        {"logp_estimator": "mc_elbo", "mc_samples": "1", "objective": "espo", "epsilon": "0.2"},
    ),
    "spg": Method(
        "SPG (arXiv 2510.09541)",
        {"logp_estimator": "mc_elbo", "mc_samples": "1", "mc_blockwise": "true", "objective": "spg"},
    ),
    "wd1": Method("wd1 (Tang et al., 2025)", {"logp_estimator": "one_step", "objective": "wd1"}),
    "justgrpo": Method(
        "JustGRPO (arXiv 2601.15165)",
        {
            "rollout_order": "left_to_right",
            "logp_estimator": "left_to_right",
            "num_iterations": "1",
            "epsilon": "0.2",
            "scale_rewards": "group",
        },
    ),
    "igpo": Method(
        "IGPO (arXiv 2509.10396)",
        # IGPO's hint sizes scaled from its 256-token completions to the demo's 28 (the answer is 24 tokens)
        {"logp_estimator": "one_step", "zero_signal_groups": "inpaint", "inpaint_free_tail": "4",
         "inpaint_chunk_size": "2 4"},
    ),
}

# The methods for a block-diffusion model (LLaDA 2.x, SDAR): the estimators above assume full attention and
# `d1 grpo` refuses them there; these score the block-causal likelihood instead (docs/rl-methods.md).
BLOCK_METHODS = {
    "block_elbo": Method("EBPO (LLaDA2.1): block ELBO, clipped ratio", {"logp_estimator": "block_elbo"}),
    "block_espo": Method(
        "ESPO (arXiv 2512.03759) on the block ELBO",
        {"logp_estimator": "block_elbo", "objective": "espo", "epsilon": "0.2"},
    ),
    "block_spg": Method(
        "SPG (arXiv 2510.09541) on the block ELBO", {"logp_estimator": "block_elbo", "objective": "spg"}
    ),
    "trajectory": Method("TraceRL (dLLM-RL): the decoding trajectory", {"logp_estimator": "trajectory"}),
}
ALL_METHODS = {**METHODS, **BLOCK_METHODS}


def method_flags(name: str) -> list[str]:
    """A method's `d1 grpo` flags (a list option's values are separated by spaces)."""
    return [item for key, value in ALL_METHODS[name].options.items() for item in (f"--{key}", *value.split())]


def family_methods(model: Path) -> dict[str, Method]:
    """The methods for `model`'s family: BLOCK_METHODS on a block-diffusion model, METHODS otherwise."""
    from d1.models.loading import load_config

    return BLOCK_METHODS if getattr(load_config(str(model)), "block_diffusion", False) else METHODS


def method_problem(name: str, model: Path) -> str | None:
    """Why `d1 grpo` would refuse method `name` on `model` (its own check, no weights loaded), or None."""
    from d1.cli.args import parse_config
    from d1.models.loading import load_config
    from d1.rl.config import DiffuGRPOConfig

    argv = ["--model_path", str(model), "--dataset", "sudoku", "--beta", "0", *method_flags(name)]
    try:
        parse_config(DiffuGRPOConfig, argv).validate(1, load_config(str(model)))
    except ValueError as error:
        return str(error)
    return None


SETTINGS = {
    "d1": {"rl_empty_cells": [8, 8], "reward_funcs": ["sudoku_reward_func"]},
    "easy": {"rl_empty_cells": [2, 6], "reward_funcs": ["sudoku_solved_reward_func"]},
    "mixed": {"rl_empty_cells": [2, 8], "reward_funcs": ["sudoku_solved_reward_func"]},
    "hard": {"rl_empty_cells": [4, 8], "reward_funcs": ["sudoku_solved_reward_func"]},
}
"""RL puzzles (blanks per puzzle, fewest and most) and reward of each setting; validation and test keep 8 blanks.
`easy` is the demo's; `mixed` and `hard` were measured for the tiny Dream (docs/rl-at-tiny-scale.md, section 8)."""


@dataclass(frozen=True)
class Run:
    demo: Path
    seed: int
    setting: str
    method: str
    folder: Path


def demo_config(demo: Path) -> DemoConfig:
    saved = json.loads((demo / "config.json").read_text())
    return DemoConfig(**{**saved, "output_dir": str(demo), "eval_gen_lengths": [saved["rl_gen_length"]]})


def setting_data(run: Run, out: Path):
    """The demo's data files, with the setting's RL puzzles (validation and test are the demo's own)."""
    config = demo_config(run.demo)
    folder = out / "data" / f"seed{run.seed}-{run.setting}"
    cells = SETTINGS[run.setting]["rl_empty_cells"]
    data = make_demo_data(folder, config.seed, config.n_sft, config.n_rl, config.n_validation, config.n_test,
                          _chat_renderer(config.family), config.trace, cells)  # fmt: skip
    for name in ("validation.csv", "test.csv"):
        if (folder / name).read_bytes() != (run.demo / "data" / name).read_bytes():
            raise RuntimeError(f"{folder / name} differs from the demo's {run.demo / 'data' / name}.")
    return config, data


def method_argv(config: DemoConfig, data, run: Run, args: argparse.Namespace) -> tuple[list[str], int]:
    """(`d1 grpo` flags, updates per rollout) of one method's run: the demo's RL stage with the benchmark's
    budget, the setting's reward, the benchmark's learning rate and negative advantages, then the method's flags."""
    method = ALL_METHODS[run.method].options
    iterations = int(method.get("num_iterations", config.num_iterations))
    argv = run_argv(config, data, run, args.rollouts * iterations, args.eval_every * iterations, iterations)
    argv += ["--reward_funcs", *SETTINGS[run.setting]["reward_funcs"], "--negative_advantage_scale", "1",
             "--learning_rate", str(args.learning_rate), *method_flags(run.method)]  # fmt: skip
    return argv, iterations


def train(run: Run, args: argparse.Namespace) -> dict:
    """`d1 grpo` for one method's run, in its own process (cached)."""
    config, data = setting_data(run, args.out)
    argv, iterations = method_argv(config, data, run, args)
    return run_grpo_process(run, argv, iterations, args.threads)


def run_argv(config: DemoConfig, data, run: Run, steps: int, every: int, iterations: int) -> list[str]:
    """The demo's RL stage as `d1 grpo` flags, from its SFT model into the run's folder, with `steps` steps,
    validation and checkpoints every `every` and a log every rollout."""
    config.rl_steps = steps
    argv = grpo_argv(config, data, run.demo / "models" / "sft", "unused")
    return argv + ["--output_dir", str(run.folder / "grpo"), "--max_steps", str(steps), "--eval_steps", str(every),
                   "--save_steps", str(every), "--logging_steps", str(iterations), "--save_total_limit", "1000"]  # fmt: skip


def run_grpo_process(run: Run, argv: list[str], iterations: int, threads: int) -> dict:
    """`d1 grpo argv` in a fresh process with `threads` CPU threads; returns its log history, wall time and
    peak memory, cached in the run's train.json (a finished run is not trained again)."""
    done = run.folder / "train.json"
    if done.exists():
        return json.loads(done.read_text())
    run.folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    with (run.folder / "grpo.log").open("w") as log:
        child = subprocess.Popen([sys.executable, "-m", "d1", "grpo", *argv], stdout=log, stderr=subprocess.STDOUT,
                                 env=env)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"d1 grpo failed for {run}; see {run.folder / 'grpo.log'}")
    states = sorted((run.folder / "grpo").glob("checkpoint-*/trainer_state.json"), key=_step_of)
    result = {
        "log_history": json.loads(states[-1].read_text())["log_history"],
        "wall_s": time.perf_counter() - started,
        "peak_mib": usage.ru_maxrss / 1024,
        "iterations": iterations,
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def _step_of(path: Path) -> int:
    return int(path.parent.name.split("-")[1])


def timeline(result: dict) -> list[dict]:
    """Per validation: step, training seconds so far (generation + log-probs + updates) and accuracy."""
    seconds, rows, last = 0.0, [], 0
    for entry in result["log_history"]:
        if "time/rollout" in entry:
            steps = entry["step"] - last
            seconds += steps * sum(entry.get(k, 0.0) for k in ("time/rollout", "time/old_logps", "time/update"))
            last = entry["step"]
        if "eval_accuracy" in entry:
            rows.append({"step": entry["step"], "seconds": seconds, "accuracy": entry["eval_accuracy"]})
    return rows


def cost(result: dict) -> dict[str, float]:
    """Seconds per rollout: generation, log-prob passes (old/reference), updates."""
    totals = {"rollout": 0.0, "old_logps": 0.0, "update": 0.0}
    last = 0
    for entry in result["log_history"]:
        if "time/rollout" in entry:
            for key in totals:
                totals[key] += (entry["step"] - last) * entry.get(f"time/{key}", 0.0)
            last = entry["step"]
    rollouts = max(1, last // result["iterations"])
    return {key: value / rollouts for key, value in totals.items()}


def best_checkpoint(run: Run, result: dict, budget_s: float | None) -> tuple[int, str]:
    """(step, model folder) of the best validation accuracy, among validations within `budget_s` if given."""
    rows = [r for r in timeline(result) if budget_s is None or r["seconds"] <= budget_s + 1e-9]
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))  # ties: the earliest
    if best["step"] == 0:
        return 0, str(run.demo / "models" / "sft")
    return best["step"], str(run.folder / "grpo" / f"checkpoint-{best['step']}")


def test_accuracy(run: Run, model: str, name: str, args: argparse.Namespace) -> dict[str, float]:
    """Test cells % and solved % of `model` (cached per model folder)."""
    cache = args.out / "test_scores.json"
    scores = json.loads(cache.read_text()) if cache.exists() else {}
    if model not in scores:
        config = demo_config(run.demo)
        folder = args.out / "eval" / f"seed{run.seed}"
        result = test_scores(config, run.demo / "data" / "test.csv", model, name, folder)
        scores[model] = result[config.rl_gen_length]
        cache.write_text(json.dumps(scores, indent=1))
    return scores[model]


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"


def report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = []
    for setting in args.settings:
        mine = [r for r in runs if r.setting == setting]
        if args.report_only:  # while another invocation trains: the finished runs only
            mine = [r for r in mine if (r.folder / "train.json").exists()]
        results = {(r.method, r.seed): train(r, args) for r in mine}
        seeds = sorted({r.seed for r in mine if all((m, r.seed) in results for m in args.methods)})
        mine = [r for r in mine if r.seed in seeds]  # equal wall time needs every method of a seed
        budget = {s: min(timeline(results[(m, s)])[-1]["seconds"] for m in args.methods) for s in seeds}
        sft = {r.seed: test_accuracy(r, str(r.demo / "models" / "sft"), "sft", args) for r in mine}
        lines += [f"\n### Setting `{setting}` ({args.rollouts} rollouts; test = 200 unseen 8-blank puzzles)\n",
                  "| method | test cells, equal rollouts: d - SFT mean [min, max] | solved d | equal wall time: cells d "
                  "| solved d | s per rollout: generate + log-probs + update | peak MiB |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for method in args.methods:
            deltas: dict[str, list[float]] = {"cells": [], "solved": [], "cells_t": [], "solved_t": []}
            costs, peaks = [], []
            for run in (r for r in mine if r.method == method):
                result = results[(method, run.seed)]
                for suffix, limit in (("", None), ("_t", budget[run.seed])):
                    step, model = best_checkpoint(run, result, limit)
                    score = test_accuracy(run, model, f"{setting}-{method}-s{run.seed}-{step}", args)
                    deltas["cells" + suffix].append(score["accuracy"] - sft[run.seed]["accuracy"])
                    deltas["solved" + suffix].append(score["solved"] - sft[run.seed]["solved"])
                costs.append(cost(result))
                peaks.append(result["peak_mib"])
            c = {k: statistics.mean(x[k] for x in costs) for k in costs[0]}
            lines.append(
                f"| {method} | {spread(deltas['cells'])} | {spread(deltas['solved'])} | {spread(deltas['cells_t'])} "
                f"| {spread(deltas['solved_t'])} | {c['rollout']:.1f} + {c['old_logps']:.1f} + {c['update']:.1f} "
                f"| {max(peaks):.0f} |"
            )
        lines.append(
            "\nSFT test cells % per seed: "
            + ", ".join(f"seed {s}: {v['accuracy']:.1f} ({v['solved']:.1f} solved)" for s, v in sorted(sft.items()))
        )
        lines.append(
            "Equal wall time budget per seed (s): " + ", ".join(f"{s}: {b:.0f}" for s, b in sorted(budget.items()))
        )
    return "\n".join(lines)


def check_methods(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Default `args.methods` to the demos' family's methods; refuse one that `d1 grpo` would refuse on any
    demo's SFT model (a full-attention estimator on a block-diffusion model, or the reverse) up front."""
    models = [demo / "models" / "sft" for demo in args.demos]
    args.methods = args.methods or list(family_methods(models[0]))
    for model in models:
        for method in args.methods:
            problem = method_problem(method, model)
            if problem:
                parser.error(f"--methods {method}: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", type=Path, nargs="+", required=True, help="d1 demo folders (one per seed).")
    parser.add_argument("--out", type=Path, default=Path("runs/rl_methods"))
    parser.add_argument(
        "--methods", nargs="+", choices=list(ALL_METHODS),
        help="Default: every method of the demos' family (BLOCK_METHODS on a block-diffusion model, else"
        " METHODS).",
    )  # fmt: skip
    parser.add_argument("--settings", nargs="+", default=["d1", "easy"], choices=list(SETTINGS))
    parser.add_argument("--rollouts", type=int, default=12)
    parser.add_argument(
        "--learning_rate", type=float, default=5e-5,
        help="One for every method (the demo's 2e-4 collapses most of them once negative advantages count).",
    )  # fmt: skip
    parser.add_argument("--eval_every", type=int, default=4, help="Rollouts between validations.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained at the same time.")
    parser.add_argument("--train_only", action="store_true", help="Train the missing runs; no table.")
    parser.add_argument(
        "--report_only", action="store_true", help="The table of the finished runs (seeds with every method); no training."
    )
    args = parser.parse_args()
    for demo in args.demos:
        if not (demo / "models" / "sft").is_dir():
            parser.error(f"--demos {demo}: no SFT model there; run `d1 demo --output_dir {demo} --stop_after sft`.")
    check_methods(parser, args)
    runs = []
    for setting in args.settings:  # a whole setting first: its table can be read while the next one trains
        for demo in args.demos:
            seed = demo_config(demo).seed
            for method in args.methods:
                runs.append(Run(demo, seed, setting, method, args.out / setting / method / f"seed{seed}"))
    for run in runs:  # the data files first, once, before runs share them
        setting_data(run, args.out)
    if args.jobs > 1 and not args.report_only:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda r: train(r, args), runs))
    for run in [] if args.report_only else runs:
        train(run, args)
    if not args.train_only:
        table = report(runs, args)
        print(table)
        (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
