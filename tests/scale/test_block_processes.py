"""Block-diffusion training on 2 CPU processes (the tiny LLaDA 2.x) resumes exactly: `d1 sft` (the block
objective) SIGKILLed, launcher and both workers, just after its checkpoint-2, then resumed with `auto`; and
`d1 grpo` with block_elbo + grpo_clip resumed from the checkpoint between the two inner updates of a rollout
(tests/scale/methods_probe.py). Each ends with the weights of the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d1.utils import COMPLETE_NAME, checkpoint_problem
from tests.conftest import run_on_two_cpu_processes, two_cpu_processes_launch
from tests.rl.test_grpo_run import grpo_argv
from tests.scale.test_kill_anywhere import same_weights
from tests.sft.test_sft_run import sft_argv

PROBE = Path(__file__).with_name("methods_probe.py")
SFT_FLAGS = ("--max_steps", "8", "--save_steps", "2", "--batch_size", "4", "--block_length", "16")


def killed_after_checkpoint(argv: list[str], checkpoint: Path, timeout: float = 120) -> None:
    """Launch `d1 ARGS` on 2 CPU processes and SIGKILL the launcher and its workers as soon as `checkpoint` is
    complete; fails the test if the run ended first."""
    launch, env = two_cpu_processes_launch(*argv)
    proc = subprocess.Popen(
        launch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and checkpoint_problem(checkpoint) and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert checkpoint_problem(checkpoint) is None


def saved_at(out: Path) -> dict[str, int]:
    """When each complete checkpoint of `out` was finished (its manifest's modification time, ns)."""
    return {
        p.name: (p / COMPLETE_NAME).stat().st_mtime_ns
        for p in out.glob("checkpoint-*")
        if not checkpoint_problem(p)
    }


@pytest.mark.slow
def test_block_sft_killed_on_two_processes_resumes_to_the_same_weights(
    tiny_llada2_dir, arithmetic_jsonl, tmp_path
) -> None:
    run_on_two_cpu_processes(
        "sft", *sft_argv(tiny_llada2_dir, arithmetic_jsonl, tmp_path / "ref", *SFT_FLAGS)
    )
    argv = sft_argv(
        tiny_llada2_dir, arithmetic_jsonl, tmp_path / "killed", *SFT_FLAGS, "--resume_from_checkpoint", "auto"
    )
    out = tmp_path / "killed" / "run"
    killed_after_checkpoint(["sft", *argv], out / "checkpoint-2")
    assert not (out / "model.safetensors").exists() and checkpoint_problem(out / "checkpoint-8")
    saved = saved_at(out)  # a resumed run leaves these checkpoints, a run started over rewrites them
    run_on_two_cpu_processes("sft", *argv)
    assert {name: at for name, at in saved_at(out).items() if name in saved} == saved
    history = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))
    assert same_weights(tmp_path / "ref" / "run", out)


@pytest.mark.slow
def test_block_grpo_on_two_processes_resumes_between_inner_updates_to_the_same_weights(
    tiny_llada2_dir, tmp_path
) -> None:
    argv = grpo_argv(
        tiny_llada2_dir, tmp_path, "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--generation_batch_size", "4", "--gradient_accumulation_steps", "1",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE)]
    path = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])  # the tests, then this d1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    env["PROBE_METHODS"] = "block_elbo"
    result = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    block = json.loads((tmp_path / "methods.json").read_text())["block_elbo"]
    assert min(block["grad_norms"]) > 0 and block["resumed"] and block["same_weights"]
