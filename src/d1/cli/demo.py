"""`d1 demo [--quick] [--seed N] [--output_dir DIR]`: the whole d1 story on a tiny model, on CPU."""

from __future__ import annotations

from d1.cli.args import parse_config
from d1.demo.config import DemoConfig


def main(argv: list[str]) -> int:
    config = parse_config(DemoConfig, argv, prog="d1 demo")
    from d1.demo.pipeline import run_demo

    run_demo(config)
    return 0
