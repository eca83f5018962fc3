"""`d1 data make sudoku|countdown|tiny_code --n N --seed S --output FILE [--split test|train] [--empty_cells LO HI]`:
synthetic data with d1's columns (Sudoku `Puzzle,Solution`, Countdown `{"input", "output"}`) in the format the
output's extension names: .csv, .jsonl or .json (d1's own files: Sudoku .csv, Countdown .jsonl)."""

from __future__ import annotations

import argparse

from d1.tasks.synthetic import GENERATED_TASKS, make_dataset


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write a synthetic Sudoku, Countdown or tiny_code set")
    make.add_argument("task", choices=list(GENERATED_TASKS), help="What to generate (tiny_code: AceCode-format f(x) problems).")
    make.add_argument("--n", type=int, required=True, help="Number of items.")
    make.add_argument("--seed", type=int, default=0, help="Seed of the items (default 0).")
    make.add_argument(
        "--output",
        required=True,
        help="File to write: .csv, .jsonl or .json (d1's own: .csv for sudoku, .jsonl for countdown).",
    )
    make.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="Sudoku: train and test puzzles of one seed never share a solution grid (default test).",
    )
    make.add_argument(
        "--empty_cells",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        help="Sudoku only: blanks per puzzle drawn from LO..HI (default: d1's 8), e.g. easier RL puzzles.",
    )
    args = parser.parse_args(argv)
    path = make_dataset(
        args.task, args.n, args.seed, args.output, split=args.split, empty_cells=args.empty_cells
    )
    print(f"wrote {args.n} {args.split} {args.task} items to {path}")
    return 0
