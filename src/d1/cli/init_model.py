"""`d1 init-model [--family llada|dream] --preset tiny|small --output DIR`: a fresh random native model plus an
offline tokenizer (the family's special tokens and chat template)."""

from __future__ import annotations

import argparse

from d1.models.families import FAMILIES
from d1.models.presets import PRESETS, init_model, model_files
from d1.utils import check_writable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 init-model", description=__doc__)
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), default="llada", help="Architecture (default llada)."
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="Size: tiny (tests) or small (the demo); default tiny.",
    )
    parser.add_argument(
        "--output", required=True, help="Folder to write config, safetensors and tokenizer to."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default 0).")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace a model already in --output with the random one."
    )
    args = parser.parse_args(argv)
    check_writable(args.output, "output")
    existing = model_files(args.output)
    if existing and not args.overwrite:
        raise ValueError(
            f"--output {args.output!r} already holds a model ({', '.join(existing)}); a random one would replace "
            "its weights. Choose another --output, or pass --overwrite."
        )
    folder = init_model(args.preset, args.output, args.seed, args.family)
    print(f"wrote {args.preset} {args.family} model to {folder}")
    return 0
