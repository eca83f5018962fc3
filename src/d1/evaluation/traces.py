"""Trace files of `d1 eval --save_traces N`: one JSON file beside each generation file, holding the traces of
the first N items (`d1.diffusion.trace` rows) with what a viewer needs besides: each generated token's text,
the task's verdict, and for Sudoku the grid the answer shows after every step.

Layout: {"format": "d1-trace", "version": 1, "items": [{"index", "task", "question", "ground_truth",
"generation", "pieces", "correct", "extracted", "grids", "puzzle", "trace"}]}. `grids[k]` is the 16-digit grid
parsed from the answer with only the tokens decided before step k kept (the digits of the others read as
empty cells, "0"), "" while the parser finds no answer; it is [] for other tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from d1.diffusion.trace import TRACE_FORMAT, TRACE_VERSION, RowTrace, check_version, row_from_dict
from d1.tasks import Task
from d1.tasks.sudoku import extract_sudoku_solution, fit_to_grid, puzzle_from_question

SUFFIX = "_traces.json"


def traces_path(generation_file: Path) -> Path:
    """The trace file beside a `*_generations.json` file."""
    return generation_file.with_name(generation_file.name.removesuffix("_generations.json") + SUFFIX)


def _blanked(pieces: list[str], decided_at: list[int], k: int) -> str:
    """The answer text with the digits of tokens decided at step k or later read as "0" (empty cells)."""
    return "".join(
        piece if when < k else "".join("0" if ch.isdigit() else ch for ch in piece)
        for piece, when in zip(pieces, decided_at, strict=True)
    )


def sudoku_grids(pieces: list[str], row: RowTrace) -> list[str]:
    """The grid the task's parser reads after each step (see the module docstring); the last is the final."""
    decided_at = row.decided_at()
    return [
        fit_to_grid(extract_sudoku_solution(_blanked(pieces, decided_at, k)))
        for k in range(max(decided_at) + 2)
    ]


def trace_item(
    tokenizer: Any, task: Task, index: int, record: dict[str, Any], tokens: torch.Tensor, row: RowTrace
) -> dict[str, Any]:
    """One item of a trace file: a generation record (`generate_answers`'), its tokens and its trace."""
    pieces = [tokenizer.decode([token]) for token in tokens.tolist()]
    parsed = task.parse(record["generations"], record["ground_truth"], record["question"])
    sudoku = task.name == "sudoku"
    return {
        "index": index,
        "task": task.name,
        "question": record["question"],
        "ground_truth": record["ground_truth"],
        "generation": record["generations"],
        "pieces": pieces,
        "correct": parsed.correct,
        "extracted": str(parsed.extracted),
        "puzzle": puzzle_from_question(record["question"]) if sudoku else None,
        "grids": sudoku_grids(pieces, row) if sudoku else [],
        "trace": row.to_dict(),
    }


def trace_file(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON payload of a trace file holding `items`."""
    return {"format": TRACE_FORMAT, "version": TRACE_VERSION, "items": items}


def trace_file_at(path: str | Path) -> Path:
    """`path` if it is a file; for a folder, the one `*_traces.json` file in it (an error listing them when it
    holds several or none)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_traces.json"))
        if len(found) == 1:
            return found[0]
        names = ", ".join(p.name for p in found) or "none"
        raise IsADirectoryError(
            f"trace file {str(path)!r} is a folder; its *_traces.json files: {names}. Pass one of them (they are "
            "written by `d1 eval --save_traces N`)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"trace file {str(path)!r}: no such file.")
    return path


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """The items of a trace file (or of a folder's one trace file), each item's `trace` checked; clear errors
    for truncated or foreign files."""
    path = trace_file_at(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not complete JSON ({err.msg}: line {err.lineno}, column {err.colno}): truncated or not a "
            "trace file. "
            "Write it again with `d1 eval --save_traces N`."
        ) from err
    check_version(data, str(path))
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path} holds no traced items.")
    for position, item in enumerate(items):
        row_from_dict(item.get("trace", {}) if isinstance(item, dict) else {}, f"{path}: item {position}")
    return items
