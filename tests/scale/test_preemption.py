"""Preemption and resume: a stop request saves a normal checkpoint and exits with status 75, `auto` resume
skips checkpoints cut off mid-write (d), and the stop reaches every rank of a 2-process run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl

import d1.rl.trainer
from d1.cluster import PREEMPTED_EXIT_CODE, STOP_FILE_ENV, Preempted, PreemptionCallback
from d1.rl.run import run_grpo
from d1.sft.run import run_sft
from d1.utils import resolve_checkpoint, write_manifest
from tests.rl.test_grpo_run import config_of as grpo_config_of
from tests.rl.test_grpo_run import grpo_argv
from tests.sft.test_sft_run import config_of, sft_argv

REPO = Path(__file__).resolve().parents[2]


def checkpoint(folder: Path, step: int, state: str | None = None) -> Path:
    """A fake checkpoint-N: complete (weights + manifest), cut off before its manifest, or with truncated weights."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes(64))
    if state != "missing":
        write_manifest(path, step)
    if state == "truncated":
        (path / "model.safetensors").write_bytes(bytes(10))
    return path


def test_auto_resume_skips_incomplete_checkpoints(tmp_path, capsys) -> None:
    checkpoint(tmp_path, 2)
    good = checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 12, "truncated")
    checkpoint(tmp_path, 14, "missing")
    (tmp_path / "checkpoint-16-reward-error").mkdir()
    assert resolve_checkpoint("auto", tmp_path) == str(good)
    out = capsys.readouterr().out
    assert "checkpoint-14: incomplete checkpoint (no d1_complete.json)" in out
    assert "checkpoint-12: incomplete checkpoint (model.safetensors has 10 bytes, 64 expected" in out
    assert resolve_checkpoint("auto", tmp_path / "absent") is None
    assert resolve_checkpoint(None, tmp_path) is None


def test_callback_turns_a_signal_into_save_and_stop() -> None:
    callback, control = PreemptionCallback(), TrainerControl()
    args, state = (
        SimpleNamespace(device=torch.device("cpu")),
        SimpleNamespace(global_step=7, is_world_process_zero=True),
    )
    before = signal.getsignal(signal.SIGUSR1)
    callback.on_init_end(args, state, control)
    try:
        callback.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGUSR1)
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop
    finally:
        with pytest.raises(Preempted) as stop:
            callback.on_train_end(args, state, control)
    assert stop.value.code == PREEMPTED_EXIT_CODE and "step 7 on SIGUSR1" in str(stop.value)
    assert signal.getsignal(signal.SIGUSR1) == before


def test_stop_then_resume_equals_an_uninterrupted_run(
    tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch
) -> None:
    """(d): a stop request after step 1 (a complete checkpoint-1), then a kill while writing checkpoint-3 (its
    folder has truncated weights and no d1_complete.json). `auto` resumes from checkpoint-1 and ends where an
    uninterrupted run ends."""
    argv = ("--max_steps", "4", "--save_steps", "100", "--batch_size", "4")
    run_sft(config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "a", *argv)))
    stop = tmp_path / "STOP"
    stop.touch()
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    with pytest.raises(Preempted):
        run_sft(config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "b", *argv)))
    run = tmp_path / "b" / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (run / "model.safetensors").exists()  # no final model from a stopped run
    monkeypatch.delenv(STOP_FILE_ENV)
    half = run / "checkpoint-3"
    shutil.copytree(run / "checkpoint-1", half)
    (half / "d1_complete.json").unlink()
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    trainer = run_sft(
        config_of(
            *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "b", *argv),
            "--resume_from_checkpoint",
            "auto",
        )
    )
    assert trainer.state.global_step == 4
    a, b = load_file(tmp_path / "a" / "run" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_grpo_cut_off_before_its_rollouts_are_saved_resumes_from_the_previous_checkpoint(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """A crash while checkpoint-3 (mid-rollout) writes its rollout buffer, after the Trainer's own files: with
    save_total_limit 1 the complete checkpoint-2 must survive, and `auto` resumes from it to the same model."""
    argv = ("--save_steps", "1", "--beta", "0.0", "--save_total_limit", "1")
    run_grpo(grpo_config_of(*grpo_argv(tiny_model_dir, tmp_path / "a", *argv)))
    real_write = d1.rl.trainer.write_atomic

    def crash_at_step_3(path, data):
        if "checkpoint-3" in str(path) and "rollout_buffer" in str(path):
            raise KeyboardInterrupt("killed while saving the rollouts")
        return real_write(path, data)

    monkeypatch.setattr(d1.rl.trainer, "write_atomic", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(grpo_config_of(*grpo_argv(tiny_model_dir, tmp_path / "b", *argv)))
    monkeypatch.undo()
    assert (tmp_path / "b" / "checkpoint-3" / "trainer_state.json").exists()
    trainer = run_grpo(
        grpo_config_of(*grpo_argv(tiny_model_dir, tmp_path / "b", *argv), "--resume_from_checkpoint", "auto")
    )
    assert trainer.state.global_step == 4
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-4"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigusr1_to_one_of_two_processes_stops_both(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    """SIGUSR1 to rank 1 only: both ranks save checkpoint-N at the same step and exit with status 75."""
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu.yaml"),
        "--main_process_port", "0", "-m", "d1", "sft",
        *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "100000", "--batch_size", "2",
                  "--save_steps", "100000", "--logging_steps", "1"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "'loss'" in line:  # training runs: the handlers are installed on every rank
                break
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        rank1 = [
            p
            for p in workers
            if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes().replace(b"LOCAL_RANK", b"")
        ]
        assert len(rank1) == 1, workers
        os.kill(rank1[0], signal.SIGUSR1)
        lines += proc.stdout.readlines()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    output = "".join(lines)
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in output, output[-3000:]
    saved = list((tmp_path / "run").glob("checkpoint-*"))
    assert len(saved) == 1 and resolve_checkpoint("auto", tmp_path / "run") == str(saved[0])
    assert "a stop request of another process" in output or "on SIGUSR1" in output
