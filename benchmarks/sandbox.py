"""What the code sandbox costs: programs per second and latency per program, sandboxed or not.

    python benchmarks/sandbox.py [--programs 200] [--workers 1 2] [--breakdown]

Runs the same programs three ways, each with 1 and 2 workers (threads, one program per thread at a time):
`bare` (`subprocess.run([sys.executable, "-E", "-s", "-B", "-c", source])`, no isolation), `rlimit`
(`d1.sandbox.run_program` in the weak mode: limits only) and `bwrap` (`d1.sandbox.run_program`, the OS
sandbox). Two program kinds: `empty` (`pass`, pure start-up) and `tests` (a HumanEval-sized function and
its asserts). Latency is the wall time of one run, launch to exit; "added" is the median latency minus the
bare median for the same kind and workers. `--breakdown` times the start-up's stages one at a time,
interleaved: bwrap with the sandbox's mounts and namespaces running `true`, then with the limits and the
switch to an unprivileged user (`prlimit`, and `setpriv` as root), then the interpreter with and without
`site`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from d1 import sandbox

PROGRAMS = {
    "empty": "pass\n",
    "tests": (
        "def below_zero(operations):\n"
        "    balance = 0\n"
        "    for op in operations:\n"
        "        balance += op\n"
        "        if balance < 0:\n"
        "            return True\n"
        "    return False\n\n"
        "assert below_zero([1, 2, -4, 5]) is True\n"
        "assert below_zero([1, 2, -3, 1, 2, -3]) is False\n"
        "assert not below_zero([])\n"
    ),
}


def bare(source: str) -> float:
    """Seconds for one unsandboxed run of ``source``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-E", "-s", "-B", "-c", source], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def sandboxed(source: str) -> float:
    """Seconds for one ``run_program`` of ``source`` (in the mode ``D1_SANDBOX`` names)."""
    start = time.perf_counter()
    result = sandbox.run_program(source, timeout_s=60)
    assert result.passed, result
    return time.perf_counter() - start


def measure(source: str, count: int, workers: int, rounds: int = 10) -> dict[str, tuple[float, float]]:
    """Per runner: (programs per second, median latency in ms) over ``count`` runs, ``workers`` at a time.
    The runners take turns in ``rounds`` chunks so that a change in the machine's load hits them alike."""
    spent = dict.fromkeys(RUNNERS, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in RUNNERS}
    with ThreadPoolExecutor(workers) as pool:
        for round_ in range(rounds + 1):  # round 0 warms up (page cache, the sandbox's probe)
            for name, (run, mode) in RUNNERS.items():
                os.environ[sandbox.MODE_ENV] = mode
                start = time.perf_counter()
                done = list(pool.map(run, [source] * (count // rounds if round_ else workers)))
                if round_:
                    spent[name] += time.perf_counter() - start
                    latencies[name] += done
    os.environ.pop(sandbox.MODE_ENV)
    total = count // rounds * rounds
    return {name: (total / spent[name], statistics.median(latencies[name]) * 1000) for name in RUNNERS}


RUNNERS = {"bare": (bare, "bwrap"), "rlimit": (sandboxed, "rlimit"), "bwrap": (sandboxed, "bwrap")}
"""name: (one run, the D1_SANDBOX mode it runs under; bare ignores it)."""


def stages() -> dict[str, list[str]]:
    """The start-up's stages as commands, each adding one part of the sandbox's command line."""
    bwrap = [sandbox.BWRAP, *sandbox._mounts(), *sandbox._scratch(), *sandbox._NAMESPACES]
    user, drop = sandbox._unprivileged(sandbox.HOST_UID_BASE if os.geteuid() == 0 else None)
    limits = sandbox._limits(10.0, 1024, processes=True)
    return {
        "`true`, bare": ["true"],
        "bwrap (mounts, namespaces) `true`": [*bwrap, "true"],
        "+ limits and user switch `true`": [*bwrap, *user, *limits, *drop, "true"],
        "python -E -s -B -c pass": [sys.executable, "-E", "-s", "-B", "-c", "pass"],
        "python -E -s -B -S -c pass (no site)": [sys.executable, "-E", "-s", "-B", "-S", "-c", "pass"],
    }


def breakdown(repeats: int) -> None:
    """Median ms of each stage, the stages interleaved so that the load hits them alike."""
    commands = stages()
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    print("| stage | median ms |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1000:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--programs", type=int, default=200, help="runs per row (default 200)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--breakdown", action="store_true", help="time the start-up's stages instead")
    args = parser.parse_args()
    problem = sandbox.check_sandbox()
    if problem:
        raise SystemExit(f"benchmarks/sandbox.py: the sandbox does not work here: {problem}")
    if args.breakdown:
        return breakdown(args.programs)
    machine = f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    print(f"{args.programs} programs per row; {time.strftime('%Y-%m-%d')}; {machine}\n")
    print("| program | workers | runner | programs/s | median latency ms | added ms |")
    print("|---|---|---|---|---|---|")
    for kind, source in PROGRAMS.items():
        for workers in args.workers:
            results = measure(source, args.programs, workers)
            for runner, (rate, latency) in results.items():
                added = latency - results["bare"][1]
                print(f"| {kind} | {workers} | {runner} | {rate:.1f} | {latency:.1f} | {added:+.1f} |")


if __name__ == "__main__":
    main()
