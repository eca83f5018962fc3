"""`d1 eval`: d1's `eval/eval.py` options (see `d1 eval --help`); writes one generation file per process
and prints d1's score table of the run's files."""

from __future__ import annotations

from d1.cli.args import parse_config
from d1.evaluation.config import EvalConfig, output_path
from d1.evaluation.runner import run_eval
from d1.evaluation.score import format_table, score_paths
from d1.utils import distributed_state, is_main_process, say


def main(argv: list[str]) -> int:
    config = parse_config(EvalConfig, argv, prog="d1 eval")
    run_eval(config)
    state = distributed_state()
    if is_main_process():
        paths = [output_path(config, rank) for rank in range(state.num_processes)]
        say(format_table(score_paths(paths)))
        say(f"generations in {config.output_dir}")
    if state.use_distributed:
        state.destroy_process_group()
    return 0
