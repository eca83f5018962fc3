"""`EvalConfig`: the options of `d1 eval` (d1's `eval/eval.py` names), checked before any data or weights load.

The sampler options are the registry's (`d1.diffusion.samplers`): one flag per option, shared with `d1 chat`,
`d1 harness` and `d1 grpo`. `--sampler` defaults to the model family's sampler (`models/families.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from d1.diffusion.samplers import SamplerOptions, default_steps, options_from, sampler_arguments
from d1.hub import check_local_or_hub
from d1.models.families import default_sampler
from d1.models.loading import DTYPES, load_config
from d1.tasks import Task, get_task
from d1.tasks.official import PROTOCOLS, check_protocol, protocol_task
from d1.utils import check_counts, check_writable

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")

@dataclass
class EvalConfig(sampler_arguments()):
    """Options of `d1 eval`; names and defaults are d1's `eval.py` (steps default to gen_length / 2)."""

    ALIASES: ClassVar[dict[str, str]] = {"--steps": "--diffusion_steps", "--model_name": "--model_label"}
    """Older spellings that still work: `--steps` (chat's and harness's former name), `--model_name` (eval's
    former name of the file label; `model_path` names the model)."""

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
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float16 or float32."}
    )
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Mask token id when neither tokenizer nor config defines one."}
    )
    model_label: str | None = field(
        default=None,
        metadata={
            "help": "The {model} part of the file names (alias --model_name); default: instruct/base if in "
            "model_path, else its folder name, plus the checkpoint's last two path parts and _fs{few_shot}."
        },
    )
    keep_special_tokens: bool = field(
        default=True,
        metadata={
            "help": "Keep special tokens (<|eot_id|>, <|endoftext|>) in the text, as d1's eval.py does "
            "(false: drop them)."
        },
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
        return default_steps(self.gen_length, self.diffusion_steps)

    @property
    def task(self) -> Task:
        """The task whose prompts and parsing implement `protocol`."""
        return protocol_task(get_task(self.dataset), self.protocol)

    def options(self) -> SamplerOptions:
        """The chosen sampler's options (the family's sampler when `sampler` is unset), validated."""
        if self.sampler:
            return options_from(self, self.sampler)
        return options_from(self, *default_sampler(load_config(self.weights, self.trust_remote_code)))

    @property
    def weights(self) -> str:
        """Where the model's config and weights are: a full checkpoint's folder, else `model_path`."""
        return self.checkpoint_path if checkpoint_kind(self.checkpoint_path) == "full" else self.model_path

    def prompting(self) -> dict[str, Any]:
        """The keyword arguments of `generate_answers` besides the sampler options that this config fixes."""
        return {
            "batch_size": self.batch_size,
            "few_shot": self.few_shot,
            "seed": self.seed,
            "keep_special_tokens": self.keep_special_tokens,
            "system_prompt": self.system_prompt,
        }


def check_config(config: EvalConfig) -> tuple[str, SamplerOptions]:
    """Check every option cheaply, before any data or weights load; returns `checkpoint_kind` and the sampler
    options."""
    check_protocol(config.protocol, get_task(config.dataset))
    if config.protocol != "d1" and (config.few_shot or config.system_prompt is not None):
        raise ValueError(
            f"few_shot={config.few_shot}, system_prompt={config.system_prompt!r}: protocol={config.protocol!r} fixes "
            "its own shots and prompt; drop these options or use --protocol d1."
        )
    check_counts({"batch_size": config.batch_size})
    if not 0 <= config.few_shot:
        raise ValueError(f"few_shot={config.few_shot} must be >= 0.")
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
    options = config.options()
    check_writable(config.output_dir, "output_dir")
    model_label(config)  # raises for a bad explicit name
    return kind, options


def checkpoint_kind(checkpoint_path: str) -> str:
    """'none', 'lora' (adapter_config.json) or 'full' (config.json + weights); anything else is an error."""
    if not checkpoint_path:
        return "none"
    path = Path(checkpoint_path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint_path={checkpoint_path!r} is not a folder.")
    if (path / "adapter_config.json").is_file():
        return "lora"
    if (path / "config.json").is_file() and any(any(path.glob(p)) for p in WEIGHT_FILES):
        return "full"
    inner = sorted(p.name for p in path.glob("checkpoint-*") if p.is_dir())
    hint = f" It holds {inner}; pass one of those." if inner else ""
    raise ValueError(
        f"checkpoint_path={checkpoint_path!r} holds neither a LoRA adapter (adapter_config.json) nor a full "
        f"model (config.json + *.safetensors/pytorch_model*.bin).{hint}"
    )


def default_model_label(config: EvalConfig) -> str:
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


def model_label(config: EvalConfig) -> str:
    """`config.model_label`, checked to be a plain file-name part, else `default_model_label`."""
    name = config.model_label or default_model_label(config)
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"model_label={name!r} must be a non-empty file-name part without path separators.")
    return name


def output_path(config: EvalConfig, rank: int) -> Path:
    """`{output_dir}/{task}_{model}_{gen_length}_{steps}_{rank}_generations.json`."""
    task = get_task(config.dataset).name  # the file name keeps d1's task name under every protocol
    filename = f"{task}_{model_label(config)}_{config.gen_length}_{config.steps}_{rank}_generations.json"
    return Path(config.output_dir) / filename

