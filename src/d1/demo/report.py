"""The demo's report: the Table-1-style accuracy table, hyperparameters, stage wall times and plots, all taken
from the run that writes it."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from d1.demo.config import ROWS, DemoConfig
from d1.models.families import family


def task_choice(config: DemoConfig) -> str:
    """The report's "Why this task" paragraph, with this run's settings."""
    low, high = config.rl_empty_cells
    puzzles = (
        f"RL puzzles with {low}-{high} empty cells (`--rl_empty_cells`; an SFT model that solves 4% of 8-blank "
        "puzzles is rewarded too rarely to learn, one that solves most of them learns from them)"
    )
    return (
        "The task is 4x4 Sudoku with 8 empty cells (as in d1's test set), in d1's `<reasoning>`/`<answer>` "
        "format; `--trace` picks the reasoning written in the SFT data: `none` (the answer alone, the "
        "default), `cells` (one line `r1c3=2 r2c1=4 ...`) or `steps` (a line per cell). The table's metric is"
        " d1's cell accuracy, with puzzles fully solved beside it. diffu-GRPO runs with four choices "
        f"measured in docs/rl-at-tiny-scale.md: the {config.logp_estimator} log-prob estimate (d1's one-step "
        "estimate loses accuracy at this scale), the solved-or-not reward instead of d1's fraction of cells, no negative"
        f" advantages (they destabilise it), and {puzzles}."
        " Countdown was not chosen because d1's Countdown evaluation parser"
        " (last `\\boxed{}`) and its RL reward (plain expression in `<answer>`) expect different answer "
        "formats. Test puzzles use solution grids that never appear in any training data, and RL checkpoints "
        "are chosen on validation puzzles (8 empty cells), not the test."
    )


def _history(done: dict[str, Any], stage: str, key: str) -> tuple[list[int], list[float]]:
    points = [(h["step"], h[key]) for h in done.get(stage, {}).get("log_history", []) if key in h]
    return [p[0] for p in points], [p[1] for p in points]


def _plots(config: DemoConfig, done: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, files = config.row_names(), []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, label in (("pretrain", "pre-training (base)"), ("sft", "SFT")):
        ax.plot(*_history(done, stage, "loss"), label=label)
    ax.set(xlabel="step", ylabel="masked diffusion loss", title="Pre-training and SFT loss")
    ax.legend()
    files.append(_save(fig, folder / "sft_loss.png"))

    stages = ("rl_base", "d1")
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, 3 * len(stages)), squeeze=False)
    for (left, right), stage in zip(axes, stages, strict=True):  # one row per RL stage
        left.plot(*_history(done, stage, "reward"))
        right.plot(*_history(done, stage, "eval_accuracy"), marker="o", color="C1")
        rewards = ", ".join(config.reward_funcs)
        left.set(xlabel="step", ylabel=f"mean reward\n({rewards})", title=f"{names[stage]}: rollout reward")
        right.set(xlabel="step", ylabel="cell accuracy %", title=f"{names[stage]}: validation (not test)")
    files.append(_save(fig, folder / "rl_curves.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    scores = done["eval"]["scores"]
    for row in ROWS:
        lengths = sorted(scores[row], key=int)
        ax.plot(
            [int(n) for n in lengths],
            [scores[row][n]["accuracy"] for n in lengths],
            marker="o",
            label=names[row],
        )
    ax.set(xlabel="generation length", ylabel="test cell accuracy %", title="Accuracy by generation length")
    ax.legend()
    files.append(_save(fig, folder / "accuracy_by_length.png"))
    return files


DENOISED_ROWS = ("sft", "d1")


def denoising(config: DemoConfig, folder: Path) -> list[str]:
    """The report's denoising section: the first test puzzle decoded by +SFT and by d1, as a PNG strip of the
    grid over the steps and one HTML replay per model (from the eval's trace files); [] without traces."""
    from d1.evaluation.traces import read_traces
    from d1.viz.html import write_trace_html
    from d1.viz.strip import write_strip

    names, length = config.row_names(), config.eval_gen_lengths[0]
    name = f"_{length}_{length // 2}_0_traces.json"
    files = {row: folder / "eval" / f"sudoku_{row}{name}" for row in DENOISED_ROWS}
    if not all(path.is_file() for path in files.values()):
        return []
    items = {names[row]: read_traces(path)[0] for row, path in files.items()}
    strip = write_strip(items, folder / "denoising.png")
    pages = [write_trace_html(path, folder / f"trace_{row}.html").name for row, path in files.items()]
    links = " and ".join(f"[{names[r]}]({page})" for r, page in zip(DENOISED_ROWS, pages, strict=True))
    return [
        f"The first test puzzle at generation length {length}, decoded by +SFT and by d1: the grid the "
        "Sudoku parser reads after each shown step (grey given, green right, red wrong). Step-by-step "
        f"replays (open in a browser, no network needed): {links}.",
        "",
        f"![denoising]({strip.name})",
    ]


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def accuracy_table(config: DemoConfig, scores: dict[str, Any]) -> str:
    """Markdown table: one row per model, test cell accuracy (d1's Sudoku metric) and puzzles solved."""
    names, lengths = config.row_names(), [str(n) for n in config.eval_gen_lengths]
    head = "| model | " + " | ".join(f"len {n}: cells % / solved %" for n in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]
    for row in ROWS:
        cells = [f"{scores[row][n]['accuracy']:.1f} / {scores[row][n]['solved']:.1f}" for n in lengths]
        lines.append(f"| {names[row]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rl_signal(config: DemoConfig, done: dict[str, Any]) -> list[str]:
    """Per RL stage: the rollout reward at the start and the end, and how often a group carried no signal."""
    lines = [
        "| RL stage | reward, first 5 logs | reward, last 5 logs | groups with one reward for all |",
        "|---|---|---|---|",
    ]
    names, notes = config.row_names(), []
    for stage in ("rl_base", "d1"):
        rewards = _history(done, stage, "reward")[1]
        zero = _history(done, stage, "zero_std_ratio")[1]
        if not rewards:
            continue
        first, last = rewards[:5], rewards[-5:]
        lines.append(
            f"| {names[stage]} | {sum(first) / len(first):.3f} | {sum(last) / len(last):.3f} | "
            f"{100 * sum(zero) / max(len(zero), 1):.0f}% |"
        )
        if max(rewards) == 0:
            notes.append(
                f"{names[stage]}: no rollout earned any reward, so every advantage was 0 and RL had nothing "
                "to learn from. RL needs a model that sometimes succeeds, which SFT gives it."
            )
    return lines + ["", *notes] if notes else lines


def numerics() -> dict[str, str]:
    """What decides the demo's digits bit for bit: torch's version and the CPU kernels it dispatches to
    (AVX2 and AVX-512 kernels round differently; `ATEN_CPU_CAPABILITY` overrides the choice)."""
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "CPU kernels": torch.backends.cpu.get_cpu_capability(),
        "transformers": importlib.metadata.version("transformers"),
        "machine": platform.machine(),
    }


def write_report(config: DemoConfig, done: dict[str, Any], total_seconds: float) -> Path:
    """Write report.md, report.json and the PNG plots; print the table and the report's path."""
    from d1.utils import say

    folder = Path(config.output_dir)
    scores = {row: {str(k): v for k, v in done["eval"]["scores"][row].items()} for row in ROWS}
    plots = _plots(config, done, folder)
    times = {name: round(stage["seconds"], 1) for name, stage in done.items()}
    table = accuracy_table(config, scores)
    summary = {
        "config": asdict(config),
        "scores": scores,
        "stage_seconds": times,
        "total_seconds": round(total_seconds, 1),
        "best_rl_checkpoints": {s: done[s].get("best") for s in ("rl_base", "d1")},
        "numerics": numerics(),
    }
    (folder / "report.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# d1 demo report",
        "",
        f"Model: a {config.preset} {config.family} (`d1 init-model --family {config.family}`), sampled with "
        f"its family's sampler ({family(config.family).sampler}) in evaluation.",
        "",
        f"Test set: {config.n_test} unseen 4x4 Sudoku puzzles; cells % = d1's Sudoku metric (correct empty cells), "
        "solved % = puzzles fully right. RL rows use the checkpoint with the best *validation* accuracy.",
        "",
        table,
        "",
        "## The RL signal",
        "",
        *rl_signal(config, done),
        "",
        "## Why this task",
        "",
        task_choice(config),
        "",
        "## Wall time (seconds)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in times.items()],
        f"| **total (this invocation)** | {total_seconds:.1f} |",
        "",
        "The digits above repeat on a machine with the same " + ", ".join(f"{k} ({v})" for k, v in summary["numerics"].items())
        + "; the thread count does not change them (README, reproducibility).",
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "## Denoising one test puzzle",
        "",
        *(denoising(config, folder) or ["No traces in this run's eval folder (written before d1 kept them)."]),
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(asdict(config), indent=2),
        "```",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    say("\n" + table + f"\n\nreport: {path}")
    return path
