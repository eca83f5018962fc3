"""Small helpers shared by the trainers and commands: writable output folders and checkpoint resolution."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import PartialState


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


TRAINER_STATE_NAME = "trainer_state.json"  # as transformers.trainer names it (not imported: heavy)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint (None when it is). The Trainer writes
    `trainer_state.json` last, after the weights, optimizer, scheduler and RNG states, so a folder without a
    readable one for its own step was cut off mid-write."""
    state_file = Path(folder) / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        step = json.loads(state_file.read_text()).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{TRAINER_STATE_NAME} is truncated"
    expected = Path(folder).name.rsplit("-", 1)[-1]
    return None if str(step) == expected else f"{TRAINER_STATE_NAME} says step {step}"


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The `checkpoint-N` folder of `output_dir` with the highest N that is complete; says which it skipped."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name[11:]), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        say(f"skipping {folder}: incomplete checkpoint ({problem}), probably interrupted while saving")
    return None


def resolve_checkpoint(resume: str | bool | None, output_dir: str | Path) -> str | bool | None:
    """`auto`/`True` -> the latest complete `checkpoint-N` under output_dir (None when there is none); a path as is."""
    if resume in (None, False, "", "none", "None", "false", "False"):
        return None
    if resume in (True, "auto", "true", "True", "latest"):
        found = latest_complete_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    elif not Path(resume).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={resume!r} is not a folder; pass a checkpoint-N folder or auto."
        )
    else:
        found = str(resume)
    if found:
        say(f"resuming from {found}")
    return found


def train_and_save(trainer: Any, resume_from_checkpoint: str | None) -> None:
    """`trainer.train`, resuming from `resume_from_checkpoint` (a folder, "auto" for the latest complete
    checkpoint in output_dir, or None), then save the final model and tokenizer to output_dir."""
    output_dir = trainer.args.output_dir
    trainer.train(resume_from_checkpoint=resolve_checkpoint(resume_from_checkpoint, output_dir))
    trainer.save_model(output_dir)
    trainer.processing_class.save_pretrained(output_dir)


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


def sharded_launch(args: Any = None) -> str | None:
    """How the weights are sharded by the launch: "deepspeed-zero<stage>" (stage unknown: "deepspeed"),
    "fsdp", or None for one process or plain DDP. Reads the TrainingArguments (`deepspeed`, `fsdp`) and the
    environment `accelerate launch --config_file` sets (ACCELERATE_USE_DEEPSPEED / _FSDP and the DeepSpeed
    config file), since under accelerate the arguments carry neither."""
    deepspeed = getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if deepspeed or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        stage = _deepspeed_stage(deepspeed) or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return f"deepspeed-zero{stage}" if stage is not None else "deepspeed"
    if getattr(args, "fsdp", None) or _env_flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _deepspeed_stage(deepspeed: str | dict | None) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a dict or a JSON file), None when it does not say."""
    if isinstance(deepspeed, str) and Path(deepspeed).is_file():
        deepspeed = json.loads(Path(deepspeed).read_text())
    if not isinstance(deepspeed, dict):
        return None
    return deepspeed.get("zero_optimization", {}).get("stage")


def distributed_state() -> PartialState:
    """accelerate's process state, initialised so that CPU-only multi-process launches use gloo."""
    return PartialState(cpu=cpu_only_launch())


def read_yaml_mapping(path: Path, shown: str) -> dict[str, Any]:
    """The mapping in a YAML file (`shown` names it in errors, e.g. "--config 'x.yaml'"): syntax errors name
    the line, and a file that holds a list or a scalar is refused."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{shown} is not UTF-8 text ({err.reason}); save it as UTF-8.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ValueError(f"{shown} is not valid YAML{where}: {problem}. Fix the file.") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"{shown} holds a {type(values).__name__}, not a mapping of options: write one `option: value` "
            "per line."
        )
    return values


def check_counts(counts: dict[str, int]) -> None:
    """Fail before any loading when a per-step count (batch size, accumulation steps) is below 1: the Trainer
    would divide by it or build empty batches only after the model has loaded."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1; pass 1 or more.")


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from printable parts (same parts, same seed, in every process, run and resume)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def shutdown_distributed() -> None:
    """Tear down the process group a multi-process run created, so processes exit cleanly (gloo aborts otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
