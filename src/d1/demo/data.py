"""The demo's data, all synthetic and deterministic by seed: generic pre-training text, Sudoku SFT traces, an RL
set of easier puzzles (fewer blanks), a validation set and a test set whose solution grids never appear in any
training data."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from d1.tasks.synthetic import (
    SUDOKU_EMPTY_CELLS,
    all_sudoku_grids,
    format_sft_example,
    make_sudoku_split,
    reblank_sudoku,
    write_sudoku_csv,
)


@dataclass(frozen=True)
class DemoData:
    """Paths of the files the stages read."""

    pretrain: Path  # jsonl {"text"}: masked-diffusion pre-training (the "base" model)
    sft: Path  # jsonl {"prompt", "completion"}: d1-format reasoning traces
    rl: Path  # csv Puzzle,Solution: diffu-GRPO prompts, `rl_empty_cells` blanks each
    validation: Path  # csv: checkpoint selection during RL (never the test set)
    test: Path  # csv: the table's numbers


Chat = Callable[[str, str], str]
"""Renders (question, answer) with the model's chat template."""


def _snippet(kind: int, train_grids: list[str], rng: random.Random, chat: Chat) -> str:
    if kind == 0:
        grid = rng.choice(train_grids)
        return " ".join(grid[r * 4 : r * 4 + 4] for r in range(4))
    if kind == 1:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"{a}+{b}={a + b}"
    digits = "".join(rng.choice("1234") for _ in range(4))
    steps = " ".join(sorted(digits))
    return chat(
        f"Sort the digits {digits}",
        f"<reasoning>\n{steps}\n</reasoning>\n<answer>\n{''.join(sorted(digits))}\n</answer>",
    )


def _pretraining_text(
    train_grids: list[str], n: int, rng: random.Random, chat: Chat, chars: int = 90
) -> list[str]:
    """Documents of mixed generic snippets (valid grids, arithmetic, chat-formatted answers to *other*
    questions), about `chars` long, so the base model knows digits, grid structure, the chat format and the
    <reasoning>/<answer> layout (like an instruct model) but has never solved a puzzle."""
    documents = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < chars:
            parts.append(_snippet(rng.randrange(3), train_grids, rng, chat))
        documents.append("\n".join(parts))
    return documents


def make_demo_data(
    folder: Path,
    seed: int,
    n_sft: int,
    n_rl: int,
    n_validation: int,
    n_test: int,
    chat: Chat,
    trace: str,
    rl_empty_cells: Sequence[int],
) -> DemoData:
    """Write every file once (idempotent for a seed). Train-side puzzles come from the train grids; the test
    puzzles from the held-out grids. SFT, validation and test puzzles have d1's 8 blanks; the RL puzzles are
    re-blanked with `rl_empty_cells` blanks (a curriculum: docs/rl-at-tiny-scale.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = DemoData(
        *(folder / name for name in ("pretrain.jsonl", "sft.jsonl", "rl.csv", "validation.csv", "test.csv"))
    )
    if all(p.exists() for p in (paths.pretrain, paths.sft, paths.rl, paths.validation, paths.test)):
        return paths
    train_side = make_sudoku_split(n_sft + n_rl + n_validation, seed, "train")
    sft, rl, validation = train_side[:n_sft], train_side[n_sft : n_sft + n_rl], train_side[n_sft + n_rl :]
    test = make_sudoku_split(n_test, seed, "test")
    test_grids = {item["solution"] for item in test}
    train_grids = sorted(
        {g for g in all_sudoku_grids() if g not in test_grids} & {i["solution"] for i in train_side}
    )
    rng = random.Random(f"{seed}-pretrain")
    with paths.pretrain.open("w") as f:
        for text in _pretraining_text(train_grids, n_sft + n_rl, rng, chat):
            f.write(json.dumps({"text": text}) + "\n")
    with paths.sft.open("w") as f:
        for item in sft:
            f.write(json.dumps(format_sft_example(item, trace)) + "\n")
    if tuple(rl_empty_cells) != (SUDOKU_EMPTY_CELLS, SUDOKU_EMPTY_CELLS):  # else keep the split's own puzzles
        rl = reblank_sudoku(rl, rl_empty_cells, seed)
    write_sudoku_csv(rl, paths.rl)
    write_sudoku_csv(validation, paths.validation)
    write_sudoku_csv(test, paths.test)
    return paths
