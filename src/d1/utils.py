"""Small helpers shared by the trainers and commands: writable output folders and checkpoint resolution."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from accelerate import PartialState

T = TypeVar("T")


SET_BY_USER = "_set_by_user"
"""The attribute where a parsed config records the option names its user gave (flags, YAML, model_args)."""


def mark_set_by_user(config: T, names: Collection[str]) -> T:
    """Record on `config` which options its user set, so that defaults applied later (a model family's sampler
    settings) replace only the others, even where the user's value equals the command's default."""
    object.__setattr__(config, SET_BY_USER, frozenset(names))
    return config


def set_by_user(config: Any) -> frozenset[str] | None:
    """The options recorded by `mark_set_by_user`; None for a config built in code (no record)."""
    return getattr(config, SET_BY_USER, None)


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


COMPLETE_NAME = "d1_complete.json"
"""Written last into a checkpoint, after every rank's files: lists each file with its size."""

RUN_SETTINGS_NAME = "run_settings.json"
"""Written into output_dir when a training run starts: the settings that define what the run computes."""

NOT_RUN_SETTINGS = ("output_dir", "job_name", "overwrite_output_dir", "resume_from_checkpoint", "local_rank")
"""Config fields that may change between a run and its resume: where it writes, how it resumes, and (with the
prefixes below) what it logs, reports, saves and uploads. Everything else (model, data, every
hyper-parameter) defines the run."""

NOT_RUN_SETTINGS_PREFIXES = ("logging_", "log_", "report_", "run_name", "project", "trackio_", "disable_tqdm",
                             "save_", "hub_", "push_to_hub", "debugging")  # fmt: skip


def _checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[11:]), reverse=True)


def temporary_path(path: str | Path) -> Path:
    """Where `write_atomic` writes before renaming: `.{name}.{pid}.tmp` beside `path` (hidden, one per process;
    checkpoint manifests skip `*.tmp`, and `.{name}.*.tmp` finds what a killed writer left)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, newlines as given) to `temporary_path(path)`, then rename it over `path`: a
    reader sees the old file or the new one, never half of one. The temporary is removed when the write fails."""
    path, temp = Path(path), temporary_path(path)
    try:
        temp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """`write_atomic` of `value` as indented JSON (what JSON cannot hold is written as its `str`)."""
    return write_atomic(path, json.dumps(value, indent=2, default=str))


def without_stderr(function: Callable[..., T]) -> Callable[..., T]:
    """`function` with the process's standard error (file descriptor 2, which subprocesses inherit) sent to
    /dev/null while it runs: for a library call whose subprocess prints a failure the library handles."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> T:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                return function(*args, **kwargs)
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    return call


def write_manifest(folder: str | Path, step: int) -> None:
    """Mark checkpoint `folder` complete: every file in it (all ranks' files must be written) with its size."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_NAME and not p.name.endswith(".tmp")
    }
    write_json_atomic(folder / COMPLETE_NAME, {"step": step, "files": files})


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete checkpoint (None when it is): d1 writes `d1_complete.json` last, so a
    folder without it was cut off while saving; a listed file that is missing or has another size was damaged."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / COMPLETE_NAME).read_text())
    except FileNotFoundError:
        return f"no {COMPLETE_NAME}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{COMPLETE_NAME} is truncated"
    if str(manifest.get("step")) != folder.name.rsplit("-", 1)[-1]:
        return f"{COMPLETE_NAME} says step {manifest.get('step')}"
    for name, size in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} expected (truncated or overwritten)"
    return None


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The `checkpoint-N` folder of `output_dir` with the highest N that is complete; says which it skipped."""
    for folder in _checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        say(f"skipping {folder}: incomplete checkpoint ({problem}), probably interrupted while saving")
    return None


BEST_CHECKPOINT_NAME = "best_checkpoint.json"
"""Written into output_dir by `d1 grpo`'s validation: the best step so far and its checkpoint folder."""


def best_checkpoints(output_dir: str | Path, best_model_checkpoint: str | None) -> list[str]:
    """Checkpoints that rotation must keep: the Trainer's best one and the one `best_checkpoint.json` names."""
    kept = [best_model_checkpoint] if best_model_checkpoint else []
    try:
        kept.append(str(json.loads((Path(output_dir) / BEST_CHECKPOINT_NAME).read_text())["checkpoint"]))
    except (FileNotFoundError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    return kept


def rotate_checkpoints(output_dir: str | Path, limit: int | None, keep: Collection[str] = ()) -> None:
    """Keep the `limit` newest complete checkpoints (and those in `keep`, the best ones), deleting older ones;
    a checkpoint still being written never counts, so the newest complete one always stays."""
    if not limit or limit <= 0:
        return
    kept = {Path(k).resolve() for k in keep}
    complete = [p for p in _checkpoints(output_dir) if checkpoint_problem(p) is None]
    for folder in complete[limit:]:
        if folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def resolve_checkpoint(resume: str | bool | None, output_dir: str | Path) -> str | None:
    """`auto`/`True` -> the latest complete `checkpoint-N` under output_dir (None when there is none); a
    folder as is, unless it is known to be damaged."""
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
        problem = checkpoint_problem(found)
        if problem == f"no {COMPLETE_NAME}":
            say(f"warning: {found} has no {COMPLETE_NAME} (saved by an older d1, or cut off while saving)")
        elif problem:
            raise ValueError(
                f"resume_from_checkpoint={resume!r} is damaged ({problem}); pass auto to take the newest "
                "complete checkpoint, or another checkpoint-N folder."
            )
    if found:
        say(f"resuming from {found}")
    return found


def check_training_length(config: Any) -> None:
    """Refuse a run that would train for 0 steps and save the starting model as if trained."""
    if config.max_steps == 0:
        raise ValueError(
            "max_steps=0 trains nothing (the starting model would be saved as if trained). Pass a positive "
            "--max_steps, or -1 (the default) to train --num_train_epochs epochs."
        )
    if config.max_steps < 0 and config.num_train_epochs <= 0:
        raise ValueError(
            f"num_train_epochs={config.num_train_epochs} trains nothing (the starting model would be saved as if "
            "trained). Pass a positive --num_train_epochs (d1 sft: --num_epochs), or a positive --max_steps."
        )


def run_settings(config: Any) -> dict[str, Any]:
    """The config fields that define what a run computes (all but `NOT_RUN_SETTINGS`), as JSON values."""
    fields = config.to_dict()
    kept = {
        k: v
        for k, v in fields.items()
        if k not in NOT_RUN_SETTINGS and not k.startswith(NOT_RUN_SETTINGS_PREFIXES)
    }
    return json.loads(json.dumps(kept, default=str))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    missing = "(unset)"
    return [
        f"{k} {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k, missing) != new.get(k, missing)
    ]


def check_output_dir(config: Any, settings: dict[str, Any]) -> str | None:
    """Before any loading, on every process: refuse an output folder that holds another run (checkpoints
    without `--resume_from_checkpoint`, or a run with settings other than `settings`) unless
    `--overwrite_output_dir`; returns the checkpoint to resume from."""
    out, resume = Path(config.output_dir), config.resume_from_checkpoint
    resuming = resume not in (None, False, "", "none", "None", "false", "False")
    if config.overwrite_output_dir:
        if resuming:
            raise ValueError(
                f"resume_from_checkpoint={resume!r} and overwrite_output_dir contradict each other: pass one."
            )
        return None
    checkpoints = _checkpoints(out)
    if checkpoints and not resuming:
        raise ValueError(
            f"output_dir={str(out)!r} holds checkpoints of an earlier run ({checkpoints[0].name}, ...). Pass "
            "--resume_from_checkpoint auto to continue it, --overwrite_output_dir to delete them and start over, "
            "or another --output_dir."
        )
    record = out / RUN_SETTINGS_NAME
    if record.is_file():
        changed = _differences(json.loads(record.read_text()), settings)
        if changed:
            raise ValueError(
                f"output_dir={str(out)!r} holds a run with other settings: {'; '.join(changed)}. Use that run's "
                "settings to resume it, --overwrite_output_dir to delete its checkpoints and start over, or "
                "another --output_dir."
            )
    elif checkpoints:
        say(f"note: {out} has no {RUN_SETTINGS_NAME} (an older d1): its checkpoints are taken as this run's")
    return resolve_checkpoint(resume, out)


def claim_output_dir(config: Any, settings: dict[str, Any]) -> None:
    """After every cheap check passed, before the model loads: with `--overwrite_output_dir` delete the old
    checkpoints, then record `settings` (main process, once all processes have checked)."""
    distributed_state().wait_for_everyone()
    if not is_main_process():
        return
    out = Path(config.output_dir)
    if config.overwrite_output_dir:
        for folder in _checkpoints(out):
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_SETTINGS_NAME, settings)


def train_and_save(trainer: Any, checkpoint: str | None) -> None:
    """`trainer.train`, resuming from `checkpoint` (a folder from `check_output_dir`, or None), then save the
    final model and tokenizer to output_dir."""
    output_dir = trainer.args.output_dir
    trainer.train(resume_from_checkpoint=checkpoint)
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
