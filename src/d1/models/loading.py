"""Loading models and tokenizers from a hub name or a local folder; mask-token resolution; LoRA; 4-bit.

LLaDA checkpoints load into d1's native implementation (no remote code); other families may use
`trust_remote_code=True`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import d1.models.llada  # noqa: F401  (registers model_type "llada" with the Auto classes)
from d1.hub import check_local_or_hub, hub_unreachable

SFT_LORA = {
    "r": 128,
    "lora_alpha": 256,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj"],
}
"""d1's SFT LoRA settings."""

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _hub_error(name_or_path: str, err: Exception) -> OSError:
    """The error for a model that is neither a local folder nor loadable from the Hub."""
    return hub_unreachable(name_or_path, err, f"hf download {name_or_path}", "pass a local model folder")


def _from_pretrained(loader: Any, name_or_path: str | Path, **kwargs: Any) -> Any:
    """`loader.from_pretrained`; a missing local path fails at once, an unreachable Hub name clearly."""
    check_local_or_hub(str(name_or_path), "model")
    try:
        return loader.from_pretrained(str(name_or_path), **kwargs)
    except OSError as err:
        if Path(name_or_path).exists():
            raise
        raise _hub_error(str(name_or_path), err) from err


def load_tokenizer(name_or_path: str | Path, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer; left padding, since prompts are left-padded for generation."""
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_mask_token_id(
    tokenizer: PreTrainedTokenizerBase | None = None, config: Any = None, override: int | None = None
) -> int:
    """The mask token: an explicit override, else the tokenizer's, else the config's, else a clear error.
    With `config`, an id outside the model's embedding table is refused here, before any weight loads."""
    for source, candidate in (
        ("--mask_token_id", override),
        ("the tokenizer's mask_token_id", getattr(tokenizer, "mask_token_id", None)),
        ("the model config's mask_token_id", getattr(config, "mask_token_id", None)),
    ):
        if candidate is not None:
            _check_token_in_vocabulary(int(candidate), config, source)
            return int(candidate)
    raise ValueError(
        "No mask token: neither the tokenizer (mask_token) nor the model config (mask_token_id) defines one. "
        "Masked diffusion needs it: pass --mask_token_id ID (LLaDA uses 126336) or add `mask_token_id` to the "
        "model's config.json."
    )


def _check_token_in_vocabulary(token_id: int, config: Any, source: str) -> None:
    """Fail when `token_id` has no row in the embedding table (LLaDA's `embedding_size`, else `vocab_size`)."""
    size = getattr(config, "embedding_size", None) or getattr(config, "vocab_size", None)
    if size is not None and not 0 <= token_id < int(size):
        raise ValueError(
            f"mask token id {token_id} (from {source}) is outside the model's vocabulary of {size} tokens "
            f"(ids 0..{int(size) - 1}). Pass --mask_token_id with the model's mask token (LLaDA: 126336), "
            "or drop it to use the tokenizer's."
        )


def load_config(name_or_path: str | Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's config (cheap: no weights), used to validate settings before loading."""
    return _from_pretrained(AutoConfig, name_or_path, trust_remote_code=trust_remote_code)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; use one of {sorted(DTYPES)} or 'auto'.")
    return DTYPES[dtype]


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file `path` cannot load (truncated, not safetensors), read from its header alone;
    None when its size matches what the header describes."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"it is {size} bytes, too short for a safetensors header"
        (header_length,) = struct.unpack("<Q", prefix)
        if 8 + header_length > size:
            return f"its header claims {header_length} bytes but the file is {size} bytes"
        try:
            header = json.loads(handle.read(header_length))
        except ValueError:
            return "its header is not valid JSON"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"its tensors need {expected} bytes but the file is {size} bytes"
    return None


def check_weight_files(name_or_path: str | Path) -> None:
    """Fail naming the file when a local model folder holds a truncated or corrupt `*.safetensors` file (an
    interrupted copy or save), before `from_pretrained` fails with no file named."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ValueError(
                f"{path} is truncated or corrupt: {problem}. Copy or download the model again, or re-save it."
            )


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    mask_token_id: int | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a masked diffusion LM; `model(input_ids, attention_mask).logits` is [B, L, vocab] and
    `model.config.mask_token_id` is set (tokenizer's, else config's, else `mask_token_id`)."""
    check_weight_files(name_or_path)
    config = load_config(name_or_path, trust_remote_code)
    tokenizer = None
    if mask_token_id is None:
        try:
            tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            tokenizer = None
    resolved_mask = resolve_mask_token_id(tokenizer, config, mask_token_id)
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config()
        kwargs.setdefault("device_map", {"": torch.cuda.current_device()})
    model = _from_pretrained(
        AutoModel, name_or_path, dtype=_resolve_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
    )
    model.config.mask_token_id = resolved_mask
    if device is not None and not load_in_4bit:
        model = model.to(device)
    return model


def bnb_4bit_config() -> Any:
    """NF4 4-bit quantisation (d1's RL set-up); CUDA only, with a clear error elsewhere."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_in_4bit needs a CUDA GPU (bitsandbytes); none is available here. Drop --load_in_4bit to load "
            "in bfloat16/float32 on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("load_in_4bit needs bitsandbytes: pip install 'd1[cuda]'.") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of the model's Linear layers: the valid LoRA `target_modules`."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    )


def check_lora_targets(model: nn.Module, target_modules: Sequence[str]) -> None:
    """Fail before training when a LoRA target names no Linear layer of the model."""
    available = linear_module_names(model)
    missing = [t for t in target_modules if t not in available]
    if missing:
        raise ValueError(
            f"lora_target_modules={list(target_modules)}: {missing} match no Linear layer of this model. "
            f"Its Linear layers are named {available}; pass --lora_target_modules with some of those."
        )


class TrainableModelArgs(Protocol):
    """The model options `SFTConfig` and `DiffuGRPOConfig` share."""

    dtype: str
    trust_remote_code: bool
    load_in_4bit: bool
    lora: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]


def check_lora_before_loading(model_config: Any, args: TrainableModelArgs) -> None:
    """Check the LoRA targets on a weightless (meta-device) copy of the model, before any weight is read."""
    if args.lora:
        with torch.device("meta"):
            skeleton = AutoModel.from_config(model_config, trust_remote_code=args.trust_remote_code)
        check_lora_targets(skeleton, args.lora_target_modules)


def load_trainable_model(
    name_or_path: str | Path, args: TrainableModelArgs, mask_token_id: int
) -> PreTrainedModel:
    """The model to train: loaded with the shared options, wrapped with LoRA when `args.lora`."""
    model = load_model(
        name_or_path,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        load_in_4bit=args.load_in_4bit,
        mask_token_id=mask_token_id,
    )
    if args.lora:
        model = apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    return model


def apply_lora(
    model: PreTrainedModel,
    r: int = SFT_LORA["r"],
    lora_alpha: int = SFT_LORA["lora_alpha"],
    lora_dropout: float = SFT_LORA["lora_dropout"],
    target_modules: Sequence[str] = tuple(SFT_LORA["target_modules"]),
) -> PreTrainedModel:
    """Wrap `model` with a peft LoRA adapter (d1's SFT defaults); k-bit models are prepared for training first."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_lora_targets(model, target_modules)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules)
    )
    return get_peft_model(model, config)
