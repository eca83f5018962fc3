"""d1's evaluation (`eval/eval.py`): generate answers for a task's test set and write d1 generation files.

`generate_answers` is the pure core (model in, records out; the RL trainer reuses it for validation).
`run_eval` adds what a run needs: cheap validation before any model loads, sharding over processes
(rank r takes items r, r+W, ...), one `{task}_{model}_{gen_length}_{steps}_{rank}_generations.json` per
rank rewritten atomically after every batch, and resumption from that file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from d1.diffusion.sampling import CACHES, REMASKING, UNMASKS, check_block_schedule, generate
from d1.evaluation.score import load_generation_file
from d1.models.loading import load_config, load_model, load_tokenizer, resolve_mask_token_id
from d1.tasks import Task, get_task
from d1.tasks.base import subsample_indices
from d1.utils import check_writable, derive_seed, distributed_state, is_main_process, say

_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_HEADER_KEYS = ("model_path", "checkpoint_path", "gen_length", "diffusion_steps", "block_length")

Progress = Callable[[list[dict[str, Any]], dict[str, float]], None]


@dataclass
class EvalConfig:
    """Options of `d1 eval`; names and defaults are d1's `eval.py` (steps default to gen_length / 2)."""

    model_path: str = field(
        default="GSAI-ML/LLaDA-8B-Instruct", metadata={"help": "Base model: Hub name or local folder."}
    )
    checkpoint_path: str = field(
        default="",
        metadata={
            "help": "'' for none; a LoRA adapter folder (adapter_config.json) applied on model_path, or a full "
            "model folder (config.json + weights) used instead of model_path."
        },
    )
    dataset: str = field(
        default="gsm8k", metadata={"help": "Task: gsm8k, math500 (math), countdown or sudoku."}
    )
    data_path: str | None = field(
        default=None, metadata={"help": "Local test file; default: the Hub set d1 uses (gsm8k, math500)."}
    )
    gen_length: int = field(default=128, metadata={"help": "Generated tokens per answer."})
    block_length: int = field(default=32, metadata={"help": "Semi-autoregressive block length."})
    diffusion_steps: int | None = field(
        default=None, metadata={"help": "Model calls per answer; default gen_length // 2 (d1)."}
    )
    batch_size: int = field(default=4, metadata={"help": "Prompts per generate call, per process."})
    few_shot: int = field(default=0, metadata={"help": "Few-shot examples in the prompt (d1's few_shot)."})
    subsample: int | None = field(
        default=None,
        metadata={
            "help": "Random test subset size (seeded); default: 256 for countdown/sudoku, all otherwise; -1 all."
        },
    )
    output_dir: str = field(default="eval_results", metadata={"help": "Folder for the generation files."})
    seed: int = field(default=42, metadata={"help": "Seed of the subsample and of sampling noise."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 = greedy (d1)."})
    remasking: str = field(default="low_confidence", metadata={"help": "low_confidence or random."})
    cfg_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance scale; 0 = off."})
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float16 or float32."}
    )
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Mask token id when neither tokenizer nor config defines one."}
    )
    model_name: str | None = field(
        default=None,
        metadata={
            "help": "The {model} part of the file names; default: instruct/base if in model_path, else its "
            "folder name, plus the checkpoint's last two path parts and _fs{few_shot}."
        },
    )
    keep_special_tokens: bool = field(
        default=True,
        metadata={
            "help": "Keep special tokens (<|eot_id|>, <|endoftext|>) in the text, as d1's eval.py does "
            "(false: drop them)."
        },
    )
    cache: str | None = field(
        default=None,
        metadata={"help": "Block KV cache: prefix or dual (Fast-dLLM's approximations); none = exact."},
    )
    unmask: str = field(
        default="schedule",
        metadata={
            "help": "schedule (LLaDA's fixed count per step), threshold or factor (parallel decoding)."
        },
    )
    threshold: float = field(default=0.9, metadata={"help": "unmask=threshold: confidence to unmask at."})
    early_stop: bool = field(
        default=False, metadata={"help": "Stop a row once its decoded text ends in EOS."}
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "Replace the task's d1 system prompt ('' = the question alone, for tiny models)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the checkpoint's own model code."}
    )

    @property
    def steps(self) -> int:
        """Diffusion steps, d1's default `gen_length // 2` when unset."""
        return self.diffusion_steps if self.diffusion_steps is not None else self.gen_length // 2

    def generation_args(self) -> dict[str, Any]:
        """The keyword arguments of `generate_answers` that this config fixes."""
        return {
            "gen_length": self.gen_length,
            "block_length": self.block_length,
            "steps": self.steps,
            "temperature": self.temperature,
            "remasking": self.remasking,
            "cfg_scale": self.cfg_scale,
            "batch_size": self.batch_size,
            "few_shot": self.few_shot,
            "seed": self.seed,
            "keep_special_tokens": self.keep_special_tokens,
            "system_prompt": self.system_prompt,
            "decoding": {
                "cache": self.cache,
                "unmask": self.unmask,
                "threshold": self.threshold,
                "early_stop": self.early_stop,
            },
        }


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    items: Sequence[dict[str, Any]],
    *,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 64,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    batch_size: int = 4,
    few_shot: int = 0,
    mask_token_id: int | None = None,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    keep_special_tokens: bool = True,
    system_prompt: str | None = None,
    generator: torch.Generator | None = None,
    decoding: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stats: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """d1 records `{"question", "prompt_input", "generations", "ground_truth"}` for `items` (`question`,
    `ground_truth`), generated in batches of left-padded prompts; only the completion is decoded.

    Noise comes from `generator` if given, else from a per-batch generator seeded with
    `derive_seed(seed, index of the batch's first item)` (`indices` gives the items' global indices),
    else from torch's global RNG. `progress(records, batch_stats)` is called after each batch; `stats`
    accumulates `forward_passes`, `generated_tokens`, `seconds`, `batches`. The caller sets eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    if indices is not None and len(indices) != len(items):
        raise ValueError(f"indices has {len(indices)} entries for {len(items)} items.")
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [
            task.build_prompt(tokenizer, item["question"], few_shot, system_prompt=system_prompt)
            for item in batch
        ]
        encoded = tokenizer(
            prompts, padding=True, add_special_tokens=False, padding_side="left", return_tensors="pt"
        )
        prompt_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        batch_generator = generator
        if batch_generator is None and seed is not None:
            first = indices[start] if indices is not None else start
            batch_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, first))
        call_stats: dict[str, int] = {}
        began = time.perf_counter()
        output = generate(
            model,
            prompt_ids,
            gen_length=gen_length,
            block_length=block_length,
            steps=steps,
            temperature=temperature,
            remasking=remasking,
            cfg_scale=cfg_scale,
            mask_token_id=mask_token_id,
            attention_mask=None if bool(attention_mask.all()) else attention_mask,
            generator=batch_generator,
            stats=call_stats,
            **(decoding or {}),
        )
        texts = tokenizer.batch_decode(
            output[:, prompt_ids.shape[1] :], skip_special_tokens=not keep_special_tokens
        )
        batch_stats = {
            "seconds": time.perf_counter() - began,
            "forward_passes": call_stats["forward_passes"],
            "generated_tokens": gen_length * len(batch),
            "batches": 1,
        }
        new = [
            {
                "question": item["question"],
                "prompt_input": prompt,
                "generations": text,
                "ground_truth": item["ground_truth"],
            }
            for item, prompt, text in zip(batch, prompts, texts, strict=True)
        ]
        records.extend(new)
        if stats is not None:
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0) + value
        if progress is not None:
            progress(new, batch_stats)
    return records


# ---------------------------------------------------------------- validation (before any model loads)


def check_generation_settings(config: EvalConfig) -> None:
    """Reject bad numbers and non-dividing lengths/steps, saying which values would work."""
    for name in ("gen_length", "block_length", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be at least 1.")
    if config.steps < 1:
        raise ValueError(f"diffusion_steps={config.steps} must be at least 1.")
    check_block_schedule(
        config.gen_length,
        config.block_length,
        config.steps,
        ("gen_length", "block_length", "diffusion_steps"),
    )
    if config.remasking not in REMASKING:
        raise ValueError(f"remasking={config.remasking!r} is not one of {REMASKING}.")
    if config.cache not in CACHES:
        raise ValueError(
            f"cache={config.cache!r} is not one of {CACHES[1:]} (leave it unset for exact decoding)."
        )
    if config.unmask not in UNMASKS:
        raise ValueError(f"unmask={config.unmask!r} is not one of {UNMASKS}.")
    for name in ("temperature", "cfg_scale", "few_shot"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 0.")


def checkpoint_kind(checkpoint_path: str) -> str:
    """'none', 'lora' (adapter_config.json) or 'full' (config.json + weights); anything else is an error."""
    if not checkpoint_path:
        return "none"
    path = Path(checkpoint_path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint_path={checkpoint_path!r} is not a folder.")
    if (path / "adapter_config.json").is_file():
        return "lora"
    if (path / "config.json").is_file() and any(any(path.glob(p)) for p in _WEIGHT_FILES):
        return "full"
    inner = sorted(p.name for p in path.glob("checkpoint-*") if p.is_dir())
    hint = f" It holds {inner}; pass one of those." if inner else ""
    raise ValueError(
        f"checkpoint_path={checkpoint_path!r} holds neither a LoRA adapter (adapter_config.json) nor a full "
        f"model (config.json + *.safetensors/pytorch_model*.bin).{hint}"
    )


def default_model_name(config: EvalConfig) -> str:
    """d1's `{model}` file-name part: instruct/base (or the folder name), checkpoint parts, `_fs{k}`."""
    lower = config.model_path.lower()
    if "instruct" in lower:
        name = "instruct"
    elif "base" in lower:
        name = "base"
    else:
        name = Path(config.model_path.rstrip("/")).name or "model"
    if config.checkpoint_path:
        name += "_" + "_".join(Path(config.checkpoint_path.rstrip("/")).parts[-2:])
    if config.few_shot > 0:
        name += f"_fs{config.few_shot}"
    return name


def model_name(config: EvalConfig) -> str:
    """`config.model_name`, checked to be a plain file-name part, else `default_model_name`."""
    name = config.model_name or default_model_name(config)
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"model_name={name!r} must be a non-empty file-name part without path separators.")
    return name


def output_path(config: EvalConfig, rank: int) -> Path:
    """`{output_dir}/{task}_{model}_{gen_length}_{steps}_{rank}_generations.json`."""
    task = get_task(config.dataset).name
    filename = f"{task}_{model_name(config)}_{config.gen_length}_{config.steps}_{rank}_generations.json"
    return Path(config.output_dir) / filename


def load_items(config: EvalConfig, task: Task) -> list[dict[str, Any]]:
    """The (subsampled) test items; a default subsample larger than a small local file means all of it."""
    if config.data_path is not None and not Path(config.data_path).is_file():
        raise FileNotFoundError(f"data_path={config.data_path!r}: no such file.")
    items = task.load_test(config.data_path, subsample=-1)
    if not items:
        raise ValueError(f"data_path={config.data_path!r} holds no test items.")
    subsample = config.subsample
    if subsample is None:
        subsample = task.default_subsample if task.default_subsample <= len(items) else -1
    return [items[i] for i in subsample_indices(len(items), subsample, config.seed)]


def read_existing(path: Path, config: EvalConfig, shard: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """This rank's earlier file, checked against the current settings and shard, or None if absent."""
    if not path.exists():
        return None
    data = load_generation_file(path)
    expected = header(config)
    for key in _HEADER_KEYS:
        if data.get(key) != expected[key]:
            raise ValueError(
                f"{path} was written with {key}={data.get(key)!r}, not {expected[key]!r}; move it away or "
                "use another output_dir."
            )
    done = data["generations"]
    if len(done) > len(shard):
        raise ValueError(
            f"{path} holds {len(done)} generations but this process's shard has {len(shard)} items: different "
            "settings or number of processes. Move it away or use another output_dir."
        )
    for position, (record, item) in enumerate(zip(done, shard, strict=False)):
        if record["question"] != item["question"]:
            raise ValueError(
                f"{path}: generation {position} answers a different question than item {position} of this "
                "process's shard (different data, subsample, seed or number of processes). Move it away or use "
                "another output_dir."
            )
    return data


def header(config: EvalConfig) -> dict[str, Any]:
    """The top-level fields of d1's generation file besides `generations` and `metrics`."""
    return {
        "model_path": config.model_path,
        "checkpoint_path": config.checkpoint_path,
        "gen_length": config.gen_length,
        "diffusion_steps": config.steps,
        "block_length": config.block_length,
    }


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path` (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the run


def _load_eval_model(
    config: EvalConfig, kind: str, weights: str, mask_token_id: int, device: torch.device
) -> nn.Module:
    model = load_model(
        weights,
        dtype=config.dtype,
        device=device,
        trust_remote_code=config.trust_remote_code,
        mask_token_id=mask_token_id,
    )
    if kind == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.checkpoint_path).merge_and_unload()
    return model.eval()


def _metrics(previous: dict[str, Any], totals: dict[str, float], processed: int) -> dict[str, Any]:
    """d1's `wall_time` (mean seconds per batch) and `total_processed`, plus throughput counters."""
    seconds, batches = totals["seconds"], int(totals["batches"])
    return {
        **previous,
        "wall_time": seconds / batches if batches else 0.0,
        "total_processed": processed,
        "total_wall_time": seconds,
        "batches": batches,
        "generated_tokens": int(totals["generated_tokens"]),
        "tokens_per_second": totals["generated_tokens"] / seconds if seconds else 0.0,
        "forward_passes": int(totals["forward_passes"]),
    }


def run_eval(config: EvalConfig) -> Path:
    """Evaluate this process's shard, resuming from its file; returns that file's path.

    Every process must call it (it waits for all at the end). Works single-process, under
    `accelerate launch` and under `torchrun`.
    """
    task = get_task(config.dataset)
    check_generation_settings(config)
    kind = checkpoint_kind(config.checkpoint_path)
    check_writable(config.output_dir, "output_dir")
    model_name(config)  # raises for a bad explicit name
    items = load_items(config, task)
    weights = config.checkpoint_path if kind == "full" else config.model_path
    has_tokenizer = (Path(weights) / "tokenizer_config.json").is_file()
    tokenizer_source = weights if kind == "full" and has_tokenizer else config.model_path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=config.trust_remote_code)
    model_config = load_config(weights, config.trust_remote_code)
    mask_token_id = resolve_mask_token_id(tokenizer, model_config, config.mask_token_id)

    state = distributed_state()
    rank, world = state.process_index, state.num_processes
    indices = list(range(rank, len(items), world))
    shard = [items[i] for i in indices]
    path = output_path(config, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_existing(path, config, shard)
    records: list[dict[str, Any]] = list(existing["generations"]) if existing else []
    previous = dict(existing["metrics"]) if existing and isinstance(existing.get("metrics"), dict) else {}
    totals = {key: float(previous.get(key, 0)) for key in ("generated_tokens", "forward_passes", "batches")}
    totals["seconds"] = float(previous.get("total_wall_time", 0.0))
    say(
        f"{task.name}: {len(items)} items over {world} process(es) -> {path.parent}/"
        f"{path.name.rsplit('_', 2)[0]}_*_generations.json"
        + (f" (resuming: {len(records)}/{len(shard)} done on rank {rank})" if records else "")
    )

    def save() -> None:
        payload = {
            "generations": records,
            "metrics": _metrics(previous, totals, len(records)),
            **header(config),
        }
        write_atomic(path, payload)

    todo = len(shard) - len(records)
    if todo > 0 or existing is None:
        save()
    if todo > 0:
        from tqdm.auto import tqdm

        model = _load_eval_model(config, kind, weights, mask_token_id, state.device)
        bar = tqdm(total=len(shard), initial=len(records), disable=not is_main_process(), desc=task.name)

        def on_batch(new: list[dict[str, Any]], batch_stats: dict[str, float]) -> None:
            records.extend(new)
            for key in totals:
                totals[key] += batch_stats[key]
            save()
            bar.update(len(new))

        start = len(records)
        generate_answers(
            model,
            tokenizer,
            task,
            shard[start:],
            **config.generation_args(),
            mask_token_id=mask_token_id,
            indices=indices[start:],
            progress=on_batch,
        )
        bar.close()
    state.wait_for_everyone()
    return path
