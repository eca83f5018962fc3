"""Kill anywhere: `d1 sft` and `d1 grpo` (saving between the inner updates of a rollout) are killed with SIGKILL at
seeded random times and restarted with `--resume_from_checkpoint auto` each time; the final weights equal an
uninterrupted run's bit for bit (one thread).

Each run is `d1`'s entry point in a child forked by multiprocessing's fork server, which imported `d1` once, so
a kill lands in the command's own work (checks, data, loading, training, saving) rather than in Python's
imports, which write nothing; this keeps 13 kills within the suite's time budget. The server is single-threaded
when it forks: a child forked from the test process itself could inherit a lock held by one of its threads and
hang."""

from __future__ import annotations

import multiprocessing
import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from d1.cli.main import main
from d1.utils import checkpoint_problem
from tests.rl.test_grpo_run import grpo_argv
from tests.sft.test_sft_run import sft_argv

KILLED = -9  # multiprocessing's exit code of a child ended by SIGKILL
RESUMES_PAST = "resumes that fell back past an incomplete checkpoint"
LOADING_STARTS = {"sft": "SFT data ", "grpo": "diffu-GRPO on "}  # printed just before the model loads
DEADLINE_S = 600  # a run that outlives this has hung: it is killed and the test fails with its log
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["d1.cli.main", "tests.scale.test_kill_anywhere"])


def _child(argv: list[str], log: str) -> None:
    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (the child exits with it open)
    sys.exit(main(argv))


def run(argv: list[str], log: Path, seconds: float | None = None, at_save: Path | None = None) -> int:
    """Run `d1 argv` in a forked child; SIGKILL it after `seconds` if still running, or (with `at_save`, the
    checkpoints' folder) at most `seconds` after it starts writing a checkpoint. Returns the exit code; fails the
    test if the child outlives `DEADLINE_S`."""
    log.touch()  # the child may be killed before it opens it
    child = CONTEXT.Process(target=_child, args=(argv, str(log)))
    deadline = time.monotonic() + DEADLINE_S
    child.start()
    if at_save is not None:
        before = {p.name for p in at_save.glob("checkpoint-*")}
        while child.is_alive() and not {p.name for p in at_save.glob("checkpoint-*")} - before:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
    left = deadline - time.monotonic()
    child.join(max(0.0, left if seconds is None else min(seconds, left)))
    hung = child.is_alive() and time.monotonic() >= deadline
    if child.is_alive():
        child.kill()
        child.join()
    if hung:
        pytest.fail(f"d1 {' '.join(argv)} ran past {DEADLINE_S} s (hung?)\n{log.read_text()[-3000:]}")
    return child.exitcode


def incomplete(out: Path) -> set[tuple]:
    """The incomplete checkpoints of `out` with their files' sizes (tells a new cut-off from an older one)."""
    return {
        (p.name, tuple(sorted((f.name, f.stat().st_size) for f in p.iterdir())))
        for p in out.glob("checkpoint-*")
        if checkpoint_problem(p)
    }


def kill_and_resume(
    command: str, argv: list[str], out: Path, kills: int, within: float, seed: int, logs: Path
) -> Counter:
    """`kills` runs of `d1 command argv --resume_from_checkpoint auto` SIGKILLed after a seeded random time
    below `within` seconds (4 in 10), or below 50 ms after a new checkpoint folder appears, then one run to the
    end; returns where the kills landed."""
    rng, tally = random.Random(seed), Counter()
    for attempt in range(kills + 1):
        last = attempt == kills
        before, log = incomplete(out), logs / f"{attempt}.log"
        at_save = out if rng.random() < 0.4 else None  # else: any time within the run's duration
        delay = None if last else rng.uniform(0, 0.05 if at_save else within)
        code = run([command, *argv, "--resume_from_checkpoint", "auto"], log, delay, at_save)
        text = log.read_text()
        tally[RESUMES_PAST] += "incomplete checkpoint" in text
        if code == 0:
            tally["finished" if last else "finished before the kill"] += 1
        elif code != KILLED or last:
            pytest.fail(f"attempt {attempt}: exit code {code}\n{text[-3000:]}")
        elif incomplete(out) - before:
            tally["kills during a save"] += 1
        elif LOADING_STARTS[command] not in text:
            tally["kills before the model loaded"] += 1
        else:
            tally["kills during training"] += 1
    return tally


def command_argv(command: str, model: Path, data: Path, folder: Path) -> tuple[list[str], Path]:
    """The tiny run's flags (a checkpoint every step) and the folder of its checkpoints and final model."""
    if command == "sft":
        extra = ("--max_steps", "8", "--save_steps", "1", "--batch_size", "4")
        return sft_argv(model, data, folder, *extra), folder / "run"
    # rollouts every 2 steps (num_iterations 2): every other checkpoint falls between inner updates
    return grpo_argv(model, folder, "--max_steps", "6", "--save_steps", "1"), folder


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("command, kills, seed", [("sft", 7, 11), ("grpo", 6, 12)])
def test_killed_anywhere_and_resumed_equals_uninterrupted(
    command, kills, seed, tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    ref_argv, ref = command_argv(command, tiny_model_dir, arithmetic_jsonl, tmp_path / "ref")
    warm = CONTEXT.Process(target=int)  # starts the fork server (its imports) before the run is timed
    warm.start()
    warm.join()
    start = time.monotonic()
    code = run([command, *ref_argv], tmp_path / "ref.log")
    duration = time.monotonic() - start
    assert code == 0, (tmp_path / "ref.log").read_text()[-3000:]
    argv, out = command_argv(command, tiny_model_dir, arithmetic_jsonl, tmp_path / "killed")
    tally = kill_and_resume(command, argv, out, kills, duration, seed, tmp_path)
    print(f"d1 {command}: uninterrupted run {duration:.1f} s; {dict(tally)}")
    assert tally["finished"] == 1 and sum(tally.values()) - tally[RESUMES_PAST] == kills + 1
    assert same_weights(ref, out)
