"""d1's evaluation (`eval/eval.py`): generate answers for a task's test set and write d1 generation files.

`generate_answers` is the pure core (model in, records out; the RL trainer reuses it for validation).
`run_eval` adds what a run needs: every option checked before any model loads, sharding over processes
(rank r takes items r, r+W, ...), one `{task}_{model}_{gen_length}_{steps}_{rank}_generations.json` per
rank rewritten atomically after every batch, and resumption from that file. Besides d1's keys each file
holds a `settings` block (`run_settings`: sampler, prompt, data, seed, weights, batch size, world size, and
the protocol card of `d1.evaluation.protocol`); a rerun resumes only files whose settings equal its own
(software versions aside) and refuses others, naming the differences, unless `overwrite` deletes the setup's
files first. `protocol` picks d1's prompts and parsing or the official ones (`d1.tasks.official`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from d1.diffusion.dream_sampling import DreamSampling, diffusion_generate
from d1.diffusion.sampling import CACHES, REMASKING, UNMASKS, check_block_schedule, generate
from d1.diffusion.trace import Trace
from d1.evaluation.protocol import NOT_RESUME_KEYS, card_fields
from d1.evaluation.score import load_generation_file
from d1.evaluation.traces import read_traces, trace_file, trace_item, traces_path
from d1.hub import check_local_or_hub, hub_unreachable
from d1.models.families import SAMPLERS
from d1.models.loading import DTYPES, load_config, load_model, load_tokenizer, resolve_mask_token_id
from d1.tasks import Task, get_task
from d1.tasks.base import subsample_indices
from d1.tasks.gsm8k import HUB_NAME as GSM8K_HUB
from d1.tasks.math500 import TEST_HUB_NAME as MATH500_HUB
from d1.tasks.official import PROTOCOLS, check_protocol, protocol_source, protocol_task
from d1.utils import check_counts, check_writable, derive_seed, distributed_state, is_main_process, say

_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_FINGERPRINTED = (*_WEIGHT_FILES, "adapter_model.bin")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16
_LOCAL_TEST_FORMATS = {
    "gsm8k": (
        GSM8K_HUB,
        "with columns 'question' and 'answer' (the solution text, ending in '#### <number>')",
    ),
    "math500": (MATH500_HUB, "with columns 'problem' and 'answer'"),
    "humaneval": ("openai/openai_humaneval", "with columns 'task_id', 'prompt', 'test', 'entry_point'"),
    "mbpp": ("google-research-datasets/mbpp", "sanitized config, with columns 'prompt', 'test_list', 'test_imports'"),
}

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
        default="gsm8k",
        metadata={"help": "Task: gsm8k, math500 (math), countdown, sudoku, humaneval, mbpp, acecode or tiny_code."},
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
    protocol: str = field(
        default="d1",
        metadata={
            "help": f"Prompts, shots and answer extraction: one of {PROTOCOLS}. d1 = d1's (default); official = "
            "LLaDA's published OpenCompass protocol (gsm8k: 4-shot chat; math500: 0-shot boxed; humaneval, mbpp); "
            "dream, diffucoder, completion: the code tasks' other published prompts. See docs/evaluation.md."
        },
    )
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
    save_traces: int = field(
        default=0,
        metadata={
            "help": "Save the denoising traces of the first N items beside the generation files "
            "(*_traces.json; view with `d1 trace FILE`)."
        },
    )
    sampler: str = field(
        default="llada",
        metadata={
            "help": "llada: d1's block sampler (any family); dream: Dream's diffusion_generate (no blocks; "
            "--alg, --alg_temp, --top_p, --top_k)."
        },
    )
    alg: str | None = field(
        default=None,
        metadata={"help": "--sampler dream: origin, maskgit_plus, topk_margin or entropy (default entropy)."},
    )
    alg_temp: float | None = field(
        default=None, metadata={"help": "--sampler dream: sample positions by confidence at this temperature."}
    )
    top_p: float | None = field(default=None, metadata={"help": "--sampler dream: nucleus truncation."})
    top_k: int | None = field(default=None, metadata={"help": "--sampler dream: top-k truncation."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start over: delete this setup's generation files in output_dir first (a rerun otherwise "
            "resumes them, and refuses files written with other settings)."
        },
    )

    @property
    def steps(self) -> int:
        """Diffusion steps, d1's default `gen_length // 2` when unset."""
        return self.diffusion_steps if self.diffusion_steps is not None else self.gen_length // 2

    @property
    def task(self) -> Task:
        """The task whose prompts and parsing implement `protocol`."""
        return protocol_task(get_task(self.dataset), self.protocol)

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
            **({"dream": self.dream_settings()} if self.sampler == "dream" else {}),
        }

    def dream_settings(self) -> dict[str, Any]:
        """`--sampler dream`'s settings of `diffusion_generate` (alg entropy unless set: Dream's recommendation)."""
        return {"alg": self.alg or "entropy", "alg_temp": self.alg_temp, "top_p": self.top_p, "top_k": self.top_k}


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
    dream: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stats: dict[str, float] | None = None,
    traces: list[dict[str, Any]] | None = None,
    trace_first: int = 0,
) -> list[dict[str, Any]]:
    """d1 records `{"question", "prompt_input", "generations", "ground_truth"}` for `items` (`question`,
    `ground_truth`), generated in batches of left-padded prompts; only the completion is decoded.

    Noise comes from `generator` if given, else from a per-batch generator seeded with
    `derive_seed(seed, index of the batch's first item)` (`indices` gives the items' global indices),
    else from torch's global RNG. `progress(records, batch_stats)` is called after each batch; `stats`
    accumulates `forward_passes`, `generated_tokens`, `seconds`, `batches`. Items whose global index is below
    `trace_first` are traced into `traces` (`d1.evaluation.traces.trace_item`). `dream` (Dream's `alg`,
    `alg_temp`, `top_p`, `top_k`) samples with Dream's `diffusion_generate` instead of the block sampler
    (`steps` and `temperature` kept; the block options unused). The caller sets eval mode.
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
        span = range(start, start + len(batch))
        numbers = [indices[i] for i in span] if indices is not None else list(span)
        batch_trace = Trace() if traces is not None and min(numbers) < trace_first else None
        batch_generator = generator
        if batch_generator is None and seed is not None:
            first = numbers[0]
            batch_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, first))
        call_stats: dict[str, int] = {}
        began = time.perf_counter()
        padding = None if bool(attention_mask.all()) else attention_mask
        if dream is None:
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
                attention_mask=padding,
                generator=batch_generator,
                stats=call_stats,
                trace=batch_trace,
                **(decoding or {}),
            )
        else:
            output = diffusion_generate(
                model, prompt_ids, attention_mask=padding, max_new_tokens=gen_length, steps=steps,
                temperature=temperature, mask_token_id=mask_token_id, generator=batch_generator, **dream,
            )  # fmt: skip
            call_stats["forward_passes"] = steps
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
        if batch_trace is not None:
            completions = output[:, prompt_ids.shape[1] :].cpu()
            for row, (number, record) in enumerate(zip(numbers, new, strict=True)):
                if number < trace_first:
                    item = trace_item(tokenizer, task, number, record, completions[row], batch_trace.rows[row])
                    traces.append(item)
        if stats is not None:
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0) + value
        if progress is not None:
            progress(new, batch_stats)
    return records


# ---------------------------------------------------------------- validation (before any model loads)


LLADA_SAMPLER_ONLY = (
    "block_length", "remasking", "cfg_scale", "cache", "unmask", "threshold", "early_stop", "save_traces",
)  # fmt: skip
DREAM_SAMPLER_ONLY = ("alg", "alg_temp", "top_p", "top_k")


def check_sampler_options(config: EvalConfig) -> None:
    """Each sampler's own options only with that sampler (left at their defaults otherwise), and Dream's
    settings valid, naming the option and the fix."""
    if config.sampler not in SAMPLERS:
        raise ValueError(f"sampler={config.sampler!r} is unknown; use one of {SAMPLERS}.")
    defaults = {f.name: f.default for f in fields(EvalConfig)}
    other = LLADA_SAMPLER_ONLY if config.sampler == "dream" else DREAM_SAMPLER_ONLY
    changed = [f"--{name} {getattr(config, name)}" for name in other if getattr(config, name) != defaults[name]]
    if changed:
        owner = "llada" if config.sampler == "dream" else "dream"
        raise ValueError(
            f"{', '.join(changed)}: option(s) of --sampler {owner}, which --sampler {config.sampler} does not "
            f"read. Drop them, or pass --sampler {owner}."
        )
    if config.sampler == "dream":
        DreamSampling(steps=config.steps, temperature=config.temperature, **config.dream_settings()).validate()


def check_generation_settings(config: EvalConfig) -> None:
    """Reject bad numbers and non-dividing lengths/steps, saying which values would work."""
    check_counts({name: getattr(config, name) for name in ("gen_length", "block_length", "batch_size")})
    check_counts({"diffusion_steps": config.steps})
    check_sampler_options(config)
    if config.sampler == "llada":
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
        if not 0 <= getattr(config, name) < math.inf:
            raise ValueError(f"{name}={getattr(config, name)} must be a finite number >= 0.")
    if not math.isfinite(config.threshold):
        raise ValueError(f"threshold={config.threshold} must be a finite number.")


def check_config(config: EvalConfig) -> str:
    """Check every option cheaply, before any data or weights load; returns `checkpoint_kind`."""
    check_protocol(config.protocol, get_task(config.dataset))
    if config.protocol != "d1" and (config.few_shot or config.system_prompt is not None):
        raise ValueError(
            f"few_shot={config.few_shot}, system_prompt={config.system_prompt!r}: protocol={config.protocol!r} fixes "
            "its own shots and prompt; drop these options or use --protocol d1."
        )
    check_generation_settings(config)
    if config.subsample is not None and config.subsample != -1 and config.subsample < 1:
        raise ValueError(f"subsample={config.subsample} must be -1 (all items) or at least 1.")
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"seed={config.seed} must be between 0 and 2**32 - 1 (numpy's seed range).")
    if config.dtype != "auto" and config.dtype not in DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is unknown; use one of {sorted(DTYPES)} or 'auto'.")
    if config.save_traces < 0:
        raise ValueError(f"save_traces={config.save_traces} must be >= 0 (0 = no traces).")
    if config.mask_token_id is not None and config.mask_token_id < 0:
        raise ValueError(f"mask_token_id={config.mask_token_id} must be >= 0.")
    if config.data_path is not None and not Path(config.data_path).is_file():
        what = "a folder, not a file" if Path(config.data_path).is_dir() else "no such file"
        raise FileNotFoundError(f"data_path={config.data_path!r}: {what}.")
    check_local_or_hub(config.model_path, "model_path")
    kind = checkpoint_kind(config.checkpoint_path)
    check_writable(config.output_dir, "output_dir")
    model_name(config)  # raises for a bad explicit name
    return kind


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
    if config.protocol != "d1":
        name += f"_{config.protocol}"
    return name


def model_name(config: EvalConfig) -> str:
    """`config.model_name`, checked to be a plain file-name part, else `default_model_name`."""
    name = config.model_name or default_model_name(config)
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"model_name={name!r} must be a non-empty file-name part without path separators.")
    return name


def output_path(config: EvalConfig, rank: int) -> Path:
    """`{output_dir}/{task}_{model}_{gen_length}_{steps}_{rank}_generations.json`."""
    task = get_task(config.dataset).name  # the file name keeps d1's task name under every protocol
    filename = f"{task}_{model_name(config)}_{config.gen_length}_{config.steps}_{rank}_generations.json"
    return Path(config.output_dir) / filename


def load_items(config: EvalConfig, task: Task) -> list[dict[str, Any]]:
    """The (subsampled) test items; an unreachable Hub set says which local file would do instead."""
    try:
        items = task.load_test(config.data_path, subsample=-1)
    except OSError as err:
        if config.data_path is not None or task.name not in _LOCAL_TEST_FORMATS:
            raise
        hub_name, columns = _LOCAL_TEST_FORMATS[task.name]
        raise hub_unreachable(
            hub_name,
            err,
            f"hf download --repo-type dataset {hub_name}",
            f"pass --data_path FILE: a local .jsonl/.json/.csv/.parquet copy of its test split, {columns}",
        ) from err
    if not items:
        raise ValueError(f"data_path={config.data_path!r} holds no test items.")
    subsample = config.subsample
    if subsample is None:  # the task's default; all of a file smaller than that
        subsample = task.default_subsample if task.default_subsample <= len(items) else -1
    return [items[i] for i in subsample_indices(len(items), subsample, config.seed)]


# ---------------------------------------------------------------- resumption: the settings a file was written with


def weights_fingerprint(*folders: str) -> str | None:
    """A cheap fingerprint of the weight files in local `folders`: names, sizes and 64 KiB samples spread over
    each file (not a full read). Retraining into the same folder changes it, copying it does not; None for
    Hub names."""
    local = [Path(folder) for folder in folders if Path(folder).is_dir()]
    if not local:
        return None
    digest = hashlib.sha256()
    for folder in local:
        for file in sorted({f for pattern in _FINGERPRINTED for f in folder.glob(pattern)}):
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
    weights: Sequence[str],
    items: Sequence[dict[str, Any]],
    mask_token_id: int,
    world: int,
) -> dict[str, Any]:
    """Everything that changes a generation or which items a rank's file holds, as written in the file's
    `settings` block, with the protocol card: a rerun resumes only files with equal settings (software
    versions aside). `batch_size` is in (it sets the padding and each batch's noise seed), and so is
    `world_size` (it sets each rank's items)."""
    sampling = config.generation_args()
    decoding = sampling.pop("decoding")
    settings = {
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
        **sampling,
        **decoding,
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


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed run left beside `path` (they are never renamed into place)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- the run


def load_eval_tokenizer(config: EvalConfig, kind: str) -> tuple[PreTrainedTokenizerBase, int, str]:
    """The tokenizer (a full checkpoint's own if it has one), the mask token id and the weights' location."""
    weights = config.checkpoint_path if kind == "full" else config.model_path
    has_tokenizer = (Path(weights) / "tokenizer_config.json").is_file()
    tokenizer_source = weights if kind == "full" and has_tokenizer else config.model_path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=config.trust_remote_code)
    model_config = load_config(weights, config.trust_remote_code)
    return tokenizer, resolve_mask_token_id(tokenizer, model_config, config.mask_token_id), weights


def load_eval_model(
    config: EvalConfig, kind: str, weights: str, mask_token_id: int, device: torch.device
) -> nn.Module:
    """The model in eval mode on `device`, a LoRA adapter merged in."""
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
    kind = check_config(config)
    task = config.task
    items = load_items(config, task)
    if config.save_traces > len(items):
        raise ValueError(
            f"save_traces={config.save_traces} is more than this run's {len(items)} test items; pass at most "
            f"--save_traces {len(items)}."
        )
    tokenizer, mask_token_id, weights = load_eval_tokenizer(config, kind)

    state = distributed_state()
    rank, world = state.process_index, state.num_processes
    indices = list(range(rank, len(items), world))
    shard = [items[i] for i in indices]
    adapter = [config.checkpoint_path] if kind == "lora" else []
    settings = run_settings(config, [weights, *adapter], items, mask_token_id, world)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    earlier = previous_files(config, settings, state.is_main_process)
    state.wait_for_everyone()  # --overwrite's deletions happen before any rank writes
    path = output_path(config, rank)
    remove_stale_temporaries(path)
    existing = earlier.get(path)
    if existing is not None:
        check_shard(path, existing, shard)
    records: list[dict[str, Any]] = list(existing["generations"]) if existing else []
    trace_to = traces_path(path)
    traces = read_traces(trace_to) if records and config.save_traces and trace_to.is_file() else []
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
            "settings": settings,
        }
        write_atomic(path, payload)
        if traces:
            write_atomic(trace_to, trace_file(traces))

    todo = len(shard) - len(records)
    if todo > 0 or existing is None:
        save()
    if todo > 0:
        from tqdm.auto import tqdm

        model = load_eval_model(config, kind, weights, mask_token_id, state.device)
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
            traces=traces,
            trace_first=config.save_traces,
        )
        bar.close()
    state.wait_for_everyone()
    return path
