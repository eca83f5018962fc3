"""`d1 launch-check --config_file FILE`: does this accelerate config fit this machine? Run it where the job
runs (the SLURM templates run it on the compute node before `accelerate launch`)."""

from __future__ import annotations

import argparse

from d1.cluster import check_launch_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 launch-check", description=__doc__)
    parser.add_argument(
        "--config_file", required=True, help="The accelerate config passed to accelerate launch."
    )
    parser.add_argument("--num_processes", type=int, help="As passed to accelerate launch (all machines).")
    parser.add_argument("--num_machines", type=int, help="As passed to accelerate launch.")
    args = parser.parse_args(argv)
    overrides = {"num_processes": args.num_processes, "num_machines": args.num_machines}
    print(check_launch_config(args.config_file, overrides))
    return 0
