"""Merging a peft LoRA adapter into its base model: check that the two fit (on the meta device, before any
weights load or anything is written), merge, and save a folder that `load_model` reads directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModel

from d1.models.loading import load_config, load_model, load_tokenizer, resolve_mask_token_id

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def _adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the adapter's weights (read from the safetensors header only)."""
    path = adapter / ADAPTER_WEIGHTS
    if not (adapter / ADAPTER_CONFIG).is_file() or not path.is_file():
        raise FileNotFoundError(
            f"adapter={str(adapter)!r} is not a peft LoRA adapter folder (needs {ADAPTER_CONFIG} and "
            f"{ADAPTER_WEIGHTS}, as `d1 sft` writes them when LoRA is on)."
        )
    with safe_open(str(path), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def adapter_mismatches(base: nn.Module, adapter_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Every adapter tensor that does not fit `base`: its module is absent or not Linear, or its shape differs."""
    modules, params = dict(base.named_modules()), dict(base.named_parameters())
    problems = []
    for name, shape in sorted(adapter_shapes.items()):
        path = name.removeprefix(PEFT_PREFIX)
        if ".lora_A." in path or ".lora_B." in path:
            module_name = path.split(".lora_")[0]
            module = modules.get(module_name)
            if not isinstance(module, nn.Linear):
                kind = "absent from the base" if module is None else f"a {type(module).__name__}, not Linear"
                problems.append(f"{module_name}: {kind}")
                continue
            want = module.in_features if ".lora_A." in path else module.out_features
            got = shape[1] if ".lora_A." in path else shape[0]
            if got != want:
                side = "in_features" if ".lora_A." in path else "out_features"
                problems.append(f"{module_name}: adapter {side} {got}, base {want}")
        elif path not in params:
            problems.append(f"{path}: absent from the base")
        elif tuple(params[path].shape) != shape:
            problems.append(f"{path}: adapter shape {list(shape)}, base {list(params[path].shape)}")
    return problems


def check_adapter_fits(base: str | Path, adapter: str | Path, trust_remote_code: bool = False) -> Any:
    """The base config, after checking on the meta device that every adapter tensor fits the base model;
    a ValueError lists the modules that disagree."""
    shapes = _adapter_shapes(Path(adapter))
    config = load_config(base, trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    problems = adapter_mismatches(skeleton, shapes)
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... {len(problems) - 12} more" if len(problems) > 12 else "")
        recorded = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        raise ValueError(
            f"adapter {str(adapter)!r} does not fit base {str(base)!r} ({len(problems)} mismatch(es): {shown}). "
            f"The adapter was trained on {recorded!r}; pass that model as --base."
        )
    return config


def merge_adapter(
    base: str | Path,
    adapter: str | Path,
    output: str | Path,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Merge the LoRA `adapter` into `base` and save weights (safetensors), config (with mask_token_id) and
    tokenizer (the adapter folder's, else the base's) to `output`."""
    from peft import PeftModel

    config = check_adapter_fits(base, adapter, trust_remote_code)
    try:
        tokenizer = load_tokenizer(adapter, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    mask_token_id = resolve_mask_token_id(tokenizer, config)
    model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code, mask_token_id=mask_token_id)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.mask_token_id = mask_token_id
    output = Path(output)
    merged.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    return output
