"""The generation files of `d1 eval`: the `settings` block a file is written with, the checks that decide
whether a rerun may resume it, and atomic writes.

A file's settings hold everything that changes a generation or which items a rank's file holds: the sampler and
only its own options (`SamplerOptions.recorded`), prompt, data, seed, weights, batch size, world size and the
protocol card. A rerun resumes only files whose settings equal its own (software versions aside).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d1.diffusion.samplers import SamplerOptions
from d1.evaluation.config import EvalConfig, output_path
from d1.evaluation.protocol import NOT_RESUME_KEYS, card_fields
from d1.evaluation.score import load_generation_file
from d1.tasks import get_task
from d1.tasks.official import protocol_source
from d1.utils import say

FINGERPRINTED = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "adapter_model.bin")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16
SETTINGS_VERSION = 2
"""2: threshold/factor decoding runs until each block is done (Fast-dLLM's semantics); files without a version
were written when it stopped after steps / num_blocks passes a block, so their generations differ."""


def weights_fingerprint(*folders: str) -> str | None:
    """A cheap fingerprint of the weight files in local `folders`: names, sizes and 64 KiB samples spread over
    each file (not a full read). Retraining into the same folder changes it, copying it does not; None for
    Hub names."""
    local = [Path(folder) for folder in folders if Path(folder).is_dir()]
    if not local:
        return None
    digest = hashlib.sha256()
    for folder in local:
        for file in sorted({f for pattern in FINGERPRINTED for f in folder.glob(pattern)}):
            size = file.stat().st_size
            digest.update(f"{file.name}:{size};".encode())
            with file.open("rb") as handle:
                for k in range(_SAMPLES):
                    handle.seek(size * k // _SAMPLES)
                    digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def items_digest(items: Sequence[dict[str, Any]]) -> str:
    """A hash of the selected test items (questions and ground truths, in order)."""
    text = json.dumps([[item["question"], item["ground_truth"]] for item in items], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_settings(
    config: EvalConfig,
    options: SamplerOptions,
    weights: Sequence[str],
    items: Sequence[dict[str, Any]],
    mask_token_id: int,
    world: int,
) -> dict[str, Any]:
    """Everything that changes a generation or which items a rank's file holds, as written in the file's
    `settings` block, with the protocol card: a rerun resumes only files with equal settings (software
    versions aside). `batch_size` is in (it sets the padding and each batch's noise seed), and so is
    `world_size` (it sets each rank's items)."""
    settings = {
        "settings_version": SETTINGS_VERSION,
        "dataset": get_task(config.dataset).name,
        "data_path": config.data_path,
        "subsample": config.subsample,
        "test_items": len(items),
        "test_items_sha256": items_digest(items),
        "model_path": config.model_path,
        "checkpoint_path": config.checkpoint_path,
        "weights_fingerprint": weights_fingerprint(*weights),
        "dtype": config.dtype,
        "mask_token_id": mask_token_id,
        **options.recorded(),
        **config.prompting(),
        "world_size": world,
        **card_fields(
            config.protocol,
            protocol_source(get_task(config.dataset), config.protocol),
            config.model_path,
            config.checkpoint_path,
        ),
    }
    return json.loads(json.dumps(settings))  # as it reads back from the file


def settings_problem(path: Path, data: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """Why `data` (read from `path`) cannot be resumed under `settings`, or None if it can."""
    old = data.get("settings")
    if not isinstance(old, dict):
        return (
            f"{path} records no settings (written before d1 recorded them, or by another tool), so resuming "
            "could mix generations made with other settings"
        )
    if old.get("settings_version") is None and old.get("unmask") in ("threshold", "factor"):
        return (
            f"{path} was written with unmask={old['unmask']!r} by an older d1, whose parallel decoding stopped "
            "after steps / num_blocks passes a block; this d1 decodes each block until it is done (Fast-dLLM's "
            "semantics, or --max_block_steps for a cap), so its generations would differ"
        )
    keys = [key for key in [*settings, *old] if key not in NOT_RESUME_KEYS]
    keys = list(dict.fromkeys(keys))
    differing = [
        f"{key}={old.get(key)!r} (now {settings.get(key)!r})"
        for key in keys
        if old.get(key) != settings.get(key)
    ]
    if differing:
        return f"{path} was written with other settings: {', '.join(differing)}"
    return None


def setup_files(config: EvalConfig) -> list[Path]:
    """This setup's generation files in `output_dir`, every rank's (earlier runs may have had more)."""
    prefix = output_path(config, 0).name.rsplit("_", 2)[0]
    name = re.compile(re.escape(prefix) + r"_\d+_generations\.json")
    folder = Path(config.output_dir)
    return sorted(
        p for p in folder.glob(f"{glob.escape(prefix)}_*_generations.json") if name.fullmatch(p.name)
    )


def previous_files(config: EvalConfig, settings: dict[str, Any], main: bool) -> dict[Path, dict[str, Any]]:
    """This setup's earlier files, each checked to hold `settings` (else an error naming the differences and
    the fix); with `overwrite` the main process deletes them instead (call `wait_for_everyone` after)."""
    files = setup_files(config)
    fix = "pass --overwrite to start over (it deletes this setup's files) or choose another --output_dir"
    if config.overwrite:
        if main and files:
            for file in files:
                file.unlink(missing_ok=True)
            say(f"--overwrite: deleted {len(files)} earlier generation file(s) of this setup")
        return {}
    found = {}
    for file in files:
        try:
            data = load_generation_file(file)
        except ValueError as err:
            raise ValueError(f"{err}; cannot resume from it: {fix}.") from err
        problem = settings_problem(file, data, settings)
        if problem:
            raise ValueError(f"{problem}. Rerun with the recorded settings to resume, or {fix}.")
        found[file] = data
    return found


def check_shard(path: Path, data: dict[str, Any], shard: Sequence[dict[str, Any]]) -> None:
    """The file's generations must answer this rank's first items, in order (guards hand-edited files)."""
    done = data["generations"]
    if len(done) > len(shard):
        raise ValueError(
            f"{path} holds {len(done)} generations but this process's shard has {len(shard)} items. "
            "Pass --overwrite to start over."
        )
    for position, (record, item) in enumerate(zip(done, shard, strict=False)):
        if record["question"] != item["question"]:
            raise ValueError(
                f"{path}: generation {position} answers a different question than item {position} of this "
                "process's shard. Pass --overwrite to start over."
            )


def header(config: EvalConfig, options: SamplerOptions) -> dict[str, Any]:
    """The top-level fields of d1's generation file besides `generations` and `metrics` (`block_length` only
    for a block sampler)."""
    return {
        "model_path": config.model_path,
        "checkpoint_path": config.checkpoint_path,
        "gen_length": options.gen_length,
        "diffusion_steps": options.steps,
        **({"block_length": options.block_length} if hasattr(options, "block_length") else {}),
    }


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed run left beside `path` (they are never renamed into place)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)
