"""Loading models and tokenizers from a hub name or a local folder; mask-token resolution; LoRA; 4-bit.

LLaDA and Dream checkpoints load into d1's native implementations (no remote code, `models/families.py`);
other models may use `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from d1.hub import check_local_or_hub, hub_unreachable
from d1.models.families import FAMILIES, family_of, unknown_model_type_error  # registers every family
from d1.utils import say, sharded_launch

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


def _from_pretrained(loader: Any, name_or_path: str | Path, method: str = "from_pretrained", **kwargs: Any) -> Any:
    """`loader.<method>` (`from_pretrained`); a missing local path fails at once, an unreachable Hub name clearly."""
    check_local_or_hub(str(name_or_path), "model")
    try:
        return getattr(loader, method)(str(name_or_path), **kwargs)
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
    known = family_of(config)
    usual = (
        f"{known.name} checkpoints use {known.mask_token} = {known.mask_token_id}"
        if known
        else ", ".join(f"{f.name} uses {f.mask_token_id}" for f in FAMILIES.values())
    )
    raise ValueError(
        "No mask token: neither the tokenizer (mask_token) nor the model config (mask_token_id) defines one. "
        f"Masked diffusion needs it: pass --mask_token_id ID ({usual}) or add `mask_token_id` to the "
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
    """The checkpoint's config (cheap: no weights), used to validate settings before loading. Without
    `trust_remote_code`, a `model_type` neither d1's families nor transformers know is refused, naming them."""
    if not trust_remote_code:
        config_dict, _ = _from_pretrained(PretrainedConfig, name_or_path, "get_config_dict")
        model_type = config_dict.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise unknown_model_type_error(str(name_or_path), model_type)
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


def require_4bit_support() -> None:
    """Fail (before any model loads) where 4-bit weights cannot be loaded: no CUDA GPU or no bitsandbytes."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_in_4bit=True needs a CUDA GPU (bitsandbytes); none is available here. Drop --load_in_4bit to "
            "load in bfloat16/float32 on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("load_in_4bit=True needs bitsandbytes: pip install 'd1[cuda]'.") from err


def bnb_4bit_config() -> Any:
    """NF4 4-bit quantisation (d1's RL set-up); CUDA only, with a clear error elsewhere."""
    require_4bit_support()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of the model's Linear layers: the valid LoRA leaf-name targets."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    )


LORA_TARGETS_HELP = (
    "Linear layers to adapt. A plain name (q_proj) adapts every layer with that last name; any other entry "
    "(with dots or regex characters) is a regular expression matched against the whole module name, e.g. "
    r"'.*\.blocks\.\d+\.ff_out' (the blocks' ff_out, not the head model.transformer.ff_out)."
)


def _is_leaf_name(target: str) -> bool:
    return target.isidentifier()


def _target_regex(target: str) -> str:
    """A regular expression for the full module names `target` stands for (see LORA_TARGETS_HELP)."""
    return rf"(?:.*\.)?{re.escape(target)}" if _is_leaf_name(target) else target


def lora_target_pattern(target_modules: Sequence[str]) -> str:
    """One regular expression over full module names for peft's `target_modules` (peft full-matches a string),
    so leaf names and full-name patterns can be mixed in one list."""
    return "|".join(f"(?:{_target_regex(t)})" for t in target_modules)


def modules_called_by_forward(model: nn.Module) -> set[str] | None:
    """Names of the Linear layers whose own `forward` runs in one two-token forward pass (works on the meta
    device), with the layers that differ from one of those only by their indices (experts.3 beside experts.5);
    None when the model cannot run that pass. A Linear used as a raw weight (LLaDA's head, computed
    with `F.linear(x, ff_out.weight)`) is not called: an adapter on it would never train."""
    called: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda *_, name=name: called.add(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device=device))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None  # remote code that needs other inputs or real weights: only the name checks apply
    finally:
        for hook in hooks:
            hook.remove()
    # a mixture of experts routes two tokens to a few experts: an expert counts as called when a sibling did
    shapes = {_generalise([name]) for name in called}
    return called | {name for name, module in model.named_modules() if _generalise([name]) in shapes}


def _generalise(names: Sequence[str]) -> str:
    """A full-name pattern for `names`, every layer number replaced by `\\d+` (blocks.3.x -> blocks\\.\\d+\\.x)."""
    return "|".join(sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names}))


def check_lora_targets(model: nn.Module, target_modules: Sequence[str]) -> None:
    """Fail before training when a LoRA target is not a valid pattern, matches no Linear layer, matches
    modules that are not Linear layers, or matches a Linear layer the forward never calls."""
    field = f"lora_target_modules={list(target_modules)}"
    modules = dict(model.named_modules())
    called = modules_called_by_forward(model)
    for target in target_modules:
        try:
            regex = re.compile(_target_regex(target))
        except re.error as err:
            raise ValueError(
                f"{field}: {target!r} is not a valid regular expression ({err}). Use a plain layer name or fix "
                "the pattern."
            ) from err
        matched = [name for name in modules if name and regex.fullmatch(name)]
        linear = [name for name in matched if isinstance(modules[name], nn.Linear)]
        other = [name for name in matched if name not in linear]
        if not linear:
            raise ValueError(
                f"{field}: {target!r} matches no Linear layer of this model. Its Linear layers are named "
                f"{linear_module_names(model)}; pass --lora_target_modules with some of those (or full-name "
                "patterns)."
            )
        if other:
            raise ValueError(
                f"{field}: {target!r} also matches modules that are not Linear layers ({other[:4]}); LoRA adapts "
                "Linear layers only: narrow the pattern."
            )
        never = [name for name in linear if called is not None and name not in called]
        if never:
            kept = [name for name in linear if name not in never]
            fix = f"use the full-name pattern {_generalise(kept)!r} instead" if kept else "remove it from the list"
            raise ValueError(
                f"{field}: {target!r} matches {never}, which the forward never calls (it uses the weight "
                f"directly), so an adapter there would never train and DDP would need find_unused_parameters. "
                f"Fix: {fix}."
            )


class TrainableModelArgs(Protocol):
    """The model options `SFTConfig` and `DiffuGRPOConfig` share (TrainingArguments fields included)."""

    dtype: str
    trust_remote_code: bool
    load_in_4bit: bool
    lora: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]
    lora_scope: ClassVar[str]
    """What an empty `lora_target_modules` adapts: "attention" (q/k/v, `d1 sft`) or "blocks" (`d1 grpo`)."""
    activation_checkpointing: bool
    deepspeed: Any
    fsdp: Any


def training_dtype(args: TrainableModelArgs) -> str:
    """The dtype to load weights in for training. Full fine-tuning without DeepSpeed/FSDP (which keep float32
    master weights themselves) runs AdamW on the loaded weights, and bf16 weights drop updates below their
    precision (most of them at lr 1e-5): `auto` then means float32 and 16-bit dtypes are refused."""
    if args.lora or args.load_in_4bit or sharded_launch(args):
        return args.dtype
    if args.dtype in (None, "auto"):
        return "float32"
    if DTYPES.get(args.dtype) in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype={args.dtype!r} with full fine-tuning (lora=False) and no DeepSpeed/FSDP: AdamW on 16-bit weights "
            "loses most updates at d1's learning rates. Use --dtype auto or float32 (float32 master weights; "
            "--bf16 keeps the compute in bfloat16), or --lora, or launch with DeepSpeed/FSDP "
            "(configs/accelerate/zero3.yaml, fsdp2.yaml)."
        )
    return args.dtype


def check_lora_before_loading(model_config: Any, args: TrainableModelArgs) -> None:
    """Check the LoRA targets on a weightless (meta-device) copy of the model, before any weight is read."""
    if args.lora:
        with torch.device("meta"):
            skeleton = AutoModel.from_config(model_config, trust_remote_code=args.trust_remote_code)
        check_lora_targets(skeleton, lora_targets(model_config, args))


def lora_targets(model_config: Any, args: TrainableModelArgs) -> list[str]:
    """`args.lora_target_modules`, or when it is empty the family's default for `args.lora_scope`
    (`Family.attention_targets` or `Family.lora_targets`)."""
    if args.lora_target_modules:
        return list(args.lora_target_modules)
    known = family_of(model_config)
    if known is None:
        raise ValueError(
            f"lora_target_modules is empty and model_type={getattr(model_config, 'model_type', None)!r} is no d1 "
            "family, so there is no default: pass --lora_target_modules with some of its Linear layers."
        )
    return list(known.attention_targets if getattr(args, "lora_scope", "blocks") == "attention" else known.lora_targets)


def check_model_before_loading(model_config: Any, args: TrainableModelArgs) -> None:
    """Every check of the model options that needs no weights: 4-bit support, the weights dtype, LoRA targets."""
    if args.load_in_4bit:
        require_4bit_support()
    training_dtype(args)
    check_lora_before_loading(model_config, args)


def load_trainable_model(
    name_or_path: str | Path, args: TrainableModelArgs, mask_token_id: int
) -> PreTrainedModel:
    """The model to train: loaded with the shared options (float32 masters for plain full fine-tuning),
    wrapped with LoRA when `args.lora`."""
    dtype = training_dtype(args)
    if dtype != args.dtype:
        say(
            f"full fine-tuning without DeepSpeed/FSDP: float32 master weights (dtype {args.dtype} -> {dtype}); "
            "--bf16 keeps the compute in bfloat16"
        )
    model = load_model(
        name_or_path,
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        load_in_4bit=args.load_in_4bit,
        mask_token_id=mask_token_id,
    )
    if args.lora:
        model = apply_lora(
            model,
            args.lora_r,
            args.lora_alpha,
            args.lora_dropout,
            lora_targets(model.config, args),
            activation_checkpointing=args.activation_checkpointing,
        )
    return model


NON_REENTRANT = {"use_reentrant": False}
"""`activation_checkpointing_kwargs` everywhere checkpointing is on: reentrant checkpointing fires each
parameter's gradient hook twice, which DDP with find_unused_parameters rejects ("mark a variable ready only
once"), and needs inputs that require grad."""


def non_reentrant(kwargs: dict[str, Any] | None, field: str = "activation_checkpointing_kwargs") -> dict[str, Any]:
    """`kwargs` with `use_reentrant=False` added; an explicit `use_reentrant=True` is refused."""
    kwargs = dict(kwargs or {})
    if kwargs.get("use_reentrant", False):
        raise ValueError(
            f"{field}={kwargs}: reentrant checkpointing breaks DDP with LoRA (each gradient is marked ready twice). "
            'Drop use_reentrant or set {"use_reentrant": false}.'
        )
    return {**kwargs, **NON_REENTRANT}


def prepare_kbit_model(model: PreTrainedModel, activation_checkpointing: bool) -> PreTrainedModel:
    """Prepare a 4-bit model for adapter training: freeze the base weights, keep every dtype (no float32
    copies of embeddings, head or norms), and turn on checkpointing only when asked: non-reentrant, with
    inputs that require grad (transformers' `activation_checkpointing_enable` sets that hook)."""
    model.requires_grad_(False)
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(NON_REENTRANT))
    return model


def apply_lora(
    model: PreTrainedModel,
    r: int = SFT_LORA["r"],
    lora_alpha: int = SFT_LORA["lora_alpha"],
    lora_dropout: float = SFT_LORA["lora_dropout"],
    target_modules: Sequence[str] = tuple(SFT_LORA["target_modules"]),
    activation_checkpointing: bool = False,
) -> PreTrainedModel:
    """Wrap `model` with a peft LoRA adapter (d1's SFT defaults) on `target_modules` (leaf names or full-name
    patterns, see LORA_TARGETS_HELP); 4-bit models are prepared with `prepare_kbit_model` first."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, target_modules)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_kbit_model(model, activation_checkpointing)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=lora_target_pattern(target_modules)
    )
    return get_peft_model(model, config)
