"""`d1 init-model --preset tiny|small --output DIR`: a fresh random native LLaDA plus an offline tokenizer."""

from __future__ import annotations

import argparse

from d1.models.presets import PRESETS, init_model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 init-model", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument(
        "--output", required=True, help="Folder to write config, safetensors and tokenizer to."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {args.preset} model to {init_model(args.preset, args.output, args.seed)}")
    return 0
