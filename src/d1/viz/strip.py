"""A PNG strip of Sudoku grids filling in over the denoising steps, one row per traced model (demo report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d1.diffusion.trace import row_from_dict


def strip_steps(item: dict[str, Any], columns: int) -> list[int]:
    """At most `columns` steps to show, evenly spread from 0 (nothing decided) to the last (all decided)."""
    last = max(row_from_dict(item["trace"]).decided_at()) + 1
    if last + 1 <= columns:
        return list(range(last + 1))
    return sorted({round(i * last / (columns - 1)) for i in range(columns)})


def _draw_grid(ax: Any, puzzle: str, grid: str, truth: str) -> None:
    """One 4x4 grid: givens grey, filled cells green (right) or red (wrong), empty cells white."""
    from matplotlib.patches import Rectangle

    ax.set(xlim=(0, 4), ylim=(4, 0), xticks=[], yticks=[], aspect="equal")
    for cell in range(16):
        row, col = divmod(cell, 4)
        given = puzzle[cell] != "0"
        digit = puzzle[cell] if given else (grid[cell] if grid else "0")
        verdict = "#c8f0c8" if digit == truth[cell] else "#f6c0c0"
        colour = "#dddddd" if given else "white" if digit == "0" else verdict
        ax.add_patch(Rectangle((col, row), 1, 1, fc=colour, ec="#888"))
        if digit != "0":
            ax.text(col + 0.5, row + 0.55, digit, ha="center", va="center", fontsize=11, weight="bold")
    ax.axhline(2, color="black", lw=1.5)  # the 2x2 boxes
    ax.axvline(2, color="black", lw=1.5)


def write_strip(rows: dict[str, dict[str, Any]], path: Path, columns: int = 8) -> Path:
    """One strip per name in `rows` (a Sudoku trace-file item each, all of the same puzzle): the grid the
    task's parser reads after each shown step; green right, red wrong, grey given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), columns, figsize=(1.4 * columns, 1.7 * len(rows)), squeeze=False)
    for line, (name, item) in zip(axes, rows.items(), strict=True):
        steps = strip_steps(item, columns)
        for ax, step in zip(line, steps, strict=False):
            _draw_grid(ax, item["puzzle"], item["grids"][step], item["ground_truth"])
            ax.set_title(f"step {step}", fontsize=8)
        for ax in line[len(steps) :]:
            ax.axis("off")
        line[0].set_ylabel(f"{name}\n({'solved' if item['correct'] else 'not solved'})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
