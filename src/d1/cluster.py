"""Running on clusters: `PreemptionCallback` (save a checkpoint and stop when SLURM warns of the end of a job),
`CompleteCheckpointsCallback` (a checkpoint counts only once all of it is on disk) and `check_launch_config`
(does an accelerate config fit this machine?)."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from d1.utils import COMPLETE_NAME, best_checkpoints, read_yaml_mapping, rotate_checkpoints, write_manifest

PREEMPTED_EXIT_CODE = 75
"""Exit status of a run stopped by `PreemptionCallback` after saving (sysexits' EX_TEMPFAIL: retry later)."""

STOP_FILE_ENV = "D1_STOP_FILE"
"""Environment variable naming a file whose appearance asks every process to save and stop."""

CPU_CONFIG = "configs/accelerate/cpu.yaml"


class Preempted(SystemExit):
    """Raised at the end of `Trainer.train` when a stop was requested; the checkpoint is already written."""

    def __init__(self, step: int, reason: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.reason = step, reason

    def __str__(self) -> str:
        return f"stopped at step {self.step} on {self.reason}; resume with --resume_from_checkpoint auto"


class PreemptionCallback(TrainerCallback):
    """On SIGUSR1/SIGTERM (or when the file named by `$D1_STOP_FILE` appears) the Trainer saves a normal
    checkpoint at the end of the current optimizer step, stops, and the process exits with status 75.

    The request is max-reduced over all processes every step, so every rank stops at the same step even when
    only one of them got the signal. A second signal of the same kind acts as it would without this callback.
    """

    signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.reason = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _requested(self, device: torch.device) -> bool:
        stop_file = os.environ.get(STOP_FILE_ENV)
        if self.reason is None and stop_file and Path(stop_file).exists():
            self.reason = f"stop file {stop_file}"
        if not (dist.is_available() and dist.is_initialized()):
            return self.reason is not None
        flag = torch.tensor([float(self.reason is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.reason is None:
            self.reason = "a stop request of another process"
        return bool(flag.item())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._requested(args.device):
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.reason is not None:
            if state.is_world_process_zero:
                print(f"d1: {Preempted(state.global_step, self.reason)}", flush=True)
            if dist.is_available() and dist.is_initialized():  # leave together: gloo aborts on a lost peer
                dist.barrier()
                dist.destroy_process_group()
            raise Preempted(state.global_step, self.reason)


class CompleteCheckpointsCallback(TrainerCallback):
    """Marks each checkpoint complete (`d1_complete.json`, written last) once the Trainer's files and every
    rank's `write_extra_files` are on disk, then rotates: `save_total_limit` keeps that many newest complete
    checkpoints (and the best ones), so a kill while saving never leaves only an incomplete checkpoint.

    The Trainer's own rotation runs inside its save, before `on_save`, and would count (and keep) the
    checkpoint still being completed: this callback takes `args.save_total_limit` over and sets it to None."""

    def __init__(self, args: Any, write_extra_files: Callable[[Path], None] | None = None):
        self.save_total_limit, args.save_total_limit = args.save_total_limit, None
        self.write_extra_files = write_extra_files

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A folder of this step left by an earlier run is incomplete until this run's save of it is done."""
        if args.should_save:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_NAME).unlink(missing_ok=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.write_extra_files is not None:
            self.write_extra_files(folder)
        if dist.is_available() and dist.is_initialized():  # every rank's files are written
            dist.barrier()
        if args.should_save and folder.is_dir():
            write_manifest(folder, state.global_step)
            keep = best_checkpoints(args.output_dir, state.best_model_checkpoint)
            rotate_checkpoints(args.output_dir, self.save_total_limit, keep)


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _per_machine(config: dict[str, Any]) -> int:
    return max(1, int(config.get("num_processes") or 1) // int(config.get("num_machines") or 1))


def _launch_problem(config: dict[str, Any], gpus: int, deepspeed_installed: bool) -> str | None:
    """What keeps `config` from running on a machine with `gpus` GPUs (None when nothing does)."""
    engine = str(config.get("distributed_type", "NO")).upper()
    per_machine = _per_machine(config)
    here = f"this machine has {gpus} CUDA GPU(s)"
    if engine not in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP"):
        return f"distributed_type {engine} is not one d1 supports (NO, MULTI_GPU, DEEPSPEED, FSDP)"
    if engine == "DEEPSPEED" and not deepspeed_installed:
        return "it uses DeepSpeed, which is not installed here (pip install deepspeed, on a CUDA machine)"
    if engine in ("DEEPSPEED", "FSDP") and gpus == 0:
        return f"{engine} needs CUDA GPUs, but {here}"
    if config.get("use_cpu"):
        return None
    if gpus < per_machine:
        return f"it starts {per_machine} GPU process(es) per machine, but {here}"
    if (
        config.get("mixed_precision") == "bf16"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        return "mixed_precision bf16 needs GPUs with bfloat16 (Ampere or newer); set mixed_precision: fp16"
    return None


def check_launch_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    gpus: int | None = None,
    deepspeed_installed: bool | None = None,
) -> str:
    """A one-line summary when the accelerate config `path` (with launcher-flag `overrides` such as
    num_processes) can run on this machine (`gpus` CUDA devices and whether deepspeed imports: detected when
    None), else a ValueError naming the config and the alternative."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config_file {str(path)!r}: no such file.")
    config = read_yaml_mapping(path, f"--config_file {str(path)!r}")
    config.update({k: v for k, v in (overrides or {}).items() if v})
    gpus = _gpu_count() if gpus is None else gpus
    if deepspeed_installed is None:
        deepspeed_installed = importlib.util.find_spec("deepspeed") is not None
    problem = _launch_problem(config, gpus, deepspeed_installed)
    if problem:
        raise ValueError(
            f"accelerate config {str(path)!r} cannot run here: {problem}. Use {CPU_CONFIG} for CPU processes "
            "(gloo), or a config that matches this machine's GPUs (see docs/cluster.md)."
        )
    machines, per_machine = int(config.get("num_machines") or 1), _per_machine(config)
    kind = "CPU (gloo)" if config.get("use_cpu") else "GPU"
    engine = str(config.get("distributed_type", "NO")).upper()
    return (
        f"ok: {path} runs {per_machine} {kind} process(es) per machine on {machines} machine(s) with {engine}"
    )
