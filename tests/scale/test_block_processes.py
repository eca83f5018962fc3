"""Block-diffusion training on 2 CPU processes (the tiny LLaDA 2.x) resumes exactly after a kill: `d1 sft`
(the block objective) and GRPO with block_elbo + grpo_clip (tests/scale/methods_probe.py, text rewards: the
tiny model never solves a Sudoku) are SIGKILLed, launcher and both workers, as soon as a checkpoint is
complete (for GRPO checkpoint-3, between the two inner updates of a rollout), resumed with
`--resume_from_checkpoint auto`, and end with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d1.utils import COMPLETE_NAME, checkpoint_problem
from tests.conftest import two_cpu_processes_launch
from tests.rl.test_grpo_run import grpo_argv
from tests.scale.test_kill_anywhere import same_weights
from tests.sft.test_sft_run import sft_argv

PROBE = Path(__file__).with_name("methods_probe.py")
LAST = {"sft": 8, "grpo": 6}  # the final step
# the first checkpoint (GRPO's falls between the two inner updates of a rollout)
KILL_AFTER = {"sft": 2, "grpo": 3}


def launch(command: str, model: Path, data: Path, folder: Path, *extra: str) -> tuple[list[str], dict, Path]:
    """The 2-process command and environment of the tiny run, and the folder of its checkpoints and model."""
    if command == "sft":
        flags = ("--max_steps", str(LAST["sft"]), "--save_steps", str(KILL_AFTER["sft"]), "--batch_size", "4",
                 "--block_length", "16", *extra)  # fmt: skip
        return *two_cpu_processes_launch("sft", *sft_argv(model, data, folder, *flags)), folder / "run"
    argv = grpo_argv(
        model, folder, "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--generation_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--max_steps", str(LAST["grpo"]), "--save_steps", str(KILL_AFTER["grpo"]), *extra,
    )  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    path = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])  # the tests, then this d1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    return [*torchrun, str(PROBE), *argv], {**env, "PROBE_TRAIN": "block_elbo"}, folder


def finish(cmd: list[str], env: dict) -> None:
    """Run `cmd` to its end; fails the test with the end of its stderr if it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, each before its own children (a launcher's workers run in their own sessions,
    out of reach of a process-group kill)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            children += [int(c) for c in (task / "children").read_text().split()]
    return [p for c in children for p in (c, *descendants(c))]


def alive(pid: int) -> bool:
    """`pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_after(cmd: list[str], env: dict, checkpoint: Path, log: Path, timeout: float = 120) -> None:
    """Run `cmd` (output to `log`) and SIGKILL it and every process under it as soon as `checkpoint` is
    complete; fails the test if the run ended first."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and checkpoint_problem(checkpoint) and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = [] if proc.poll() is not None else descendants(proc.pid)
    for pid in [proc.pid, *workers]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.returncode == -signal.SIGKILL and len(workers) >= 2, log.read_text()[-3000:]
    assert checkpoint_problem(checkpoint) is None


def saved_at(out: Path) -> dict[str, int]:
    """When each complete checkpoint of `out` was finished (its manifest's modification time, ns)."""
    return {
        p.name: (p / COMPLETE_NAME).stat().st_mtime_ns
        for p in out.glob("checkpoint-*")
        if not checkpoint_problem(p)
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_block_training_killed_on_two_processes_resumes_to_the_same_weights(
    command, tiny_llada2_dir, arithmetic_jsonl, tmp_path
) -> None:
    ref_cmd, env, ref = launch(command, tiny_llada2_dir, arithmetic_jsonl, tmp_path / "ref")
    finish(ref_cmd, env)
    cmd, env, out = launch(
        command, tiny_llada2_dir, arithmetic_jsonl, tmp_path / "killed", "--resume_from_checkpoint", "auto"
    )
    last = out / f"checkpoint-{LAST[command]}"
    kill_after(cmd, env, out / f"checkpoint-{KILL_AFTER[command]}", tmp_path / "killed.log")
    assert not (out / "model.safetensors").exists() and checkpoint_problem(last)
    saved = saved_at(out)  # a resumed run leaves these checkpoints; a run started over would rewrite them
    finish(cmd, env)
    assert {name: at for name, at in saved_at(out).items() if name in saved} == saved
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    norms = [h["grad_norm"] for h in history if "grad_norm" in h]
    assert len(norms) == LAST[command] and min(norms) > 0  # every step of the resumed history learned
    assert same_weights(ref, out)
