"""Small helpers shared by the trainers and commands: writable output folders and checkpoint resolution."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers.trainer_utils import get_last_checkpoint


def check_writable(path: str | Path, field: str) -> None:
    """Fail before any work when `path` (or the nearest existing parent it would be created in) is not writable."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{field}={str(path)!r} cannot be written ({probe} is not a writable folder). Choose another {field} "
            "or fix the folder's permissions."
        )


def resolve_checkpoint(resume: str | bool | None, output_dir: str | Path) -> str | bool | None:
    """`auto`/`True` -> the latest complete `checkpoint-N` under output_dir (None when there is none); a path as is."""
    if resume in (None, False, "", "none", "None", "false", "False"):
        return None
    if resume in (True, "auto", "true", "True", "latest"):
        return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    if not Path(resume).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={resume!r} is not a folder; pass a checkpoint-N folder or auto."
        )
    return str(resume)


def is_main_process() -> bool:
    """True on rank 0 (or without a launcher); used to print once per run, not once per process."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """Print a progress line for the person running the command (main process only)."""
    if is_main_process():
        print(message, flush=True)


def cpu_only_launch() -> bool:
    """True under a multi-process launcher (torchrun, `accelerate launch --multi_gpu`) on a machine without
    CUDA: accelerate then needs `cpu=True` to join the processes with gloo instead of running each alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_state() -> PartialState:
    """accelerate's process state, initialised so that CPU-only multi-process launches use gloo."""
    return PartialState(cpu=cpu_only_launch())


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from printable parts (same parts, same seed, in every process, run and resume)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
