"""The logits that predict given positions, for both alignments of masked diffusion LMs.

LLaDA-style models predict the token at position i from the output at i. Models adapted from autoregressive
ones (Dream) keep the AR alignment: the output at i-1 predicts token i, and position 0 reuses its own output
(Dream's `cat([logits[:, :1], logits[:, :-1]], 1)`). A model says which through `config.logits_shifted`;
every sampler, log-probability and loss reads it here and nowhere else. `truncate_logits` is the samplers'
top-p / top-k truncation.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=256)
def _parameters(forward: Any) -> Any:
    """`forward`'s parameters, read once per function (inspecting a signature costs about a tenth of a small
    model's cached sampler step)."""
    return inspect.signature(forward).parameters


def _accepts(model: nn.Module, argument: str) -> bool:
    """Whether `model.forward` takes `argument` by name, looking through wrappers that pass keyword
    arguments on to the model they wrap (peft's `get_base_model()`, DDP's and DeepSpeed's `module`)."""
    forward = model.forward
    parameters = _parameters(getattr(forward, "__func__", forward))
    if argument in parameters:
        return True
    inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "module", None)
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return passes_on and isinstance(inner, nn.Module) and inner is not model and _accepts(inner, argument)


def logits_are_shifted(model: nn.Module) -> bool:
    """Whether the model's output at i-1 predicts token i (`config.logits_shifted`), looking through the
    `module` of DDP, DeepSpeed and FSDP first (a DeepSpeed engine's own `config` is its DeepSpeed settings);
    peft models expose their base model's config."""
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and inner is not model:
        return logits_are_shifted(inner)
    return bool(getattr(getattr(model, "config", None), "logits_shifted", False))


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Raw logits [B, L, V] realigned so that column i predicts token i (Dream's shift)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def predicting_logits(
    model: nn.Module, ids: torch.Tensor, keep: int | slice, attention_mask: Any = None, **kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """Logits [B, len(keep), V] whose column j predicts input column `keep.start + j` (`keep`: a slice with
    non-negative bounds, or an int N > 0 for the last N columns), and the model output. Only the columns
    needed (for a shifted model, those one to the left) are computed when the model takes `logits_to_keep`,
    asked for in the caller's form (an int stays HF's "last N", which any such model understands)."""
    length = ids.shape[1]
    start, stop, _ = (
        slice(length - keep, None).indices(length) if isinstance(keep, int) else keep.indices(length)
    )
    shifted = logits_are_shifted(model)
    raw = slice(max(start - 1, 0), max(stop - 1, 1)) if shifted else slice(start, stop)
    if _accepts(model, "logits_to_keep"):
        to_keep = length - raw.start if isinstance(keep, int) else raw
        out = model(ids, attention_mask=attention_mask, logits_to_keep=to_keep, **kwargs)
        logits = out.logits[:, : raw.stop - raw.start]
    else:
        out = model(ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits[:, raw]
    if shifted and start == 0 and stop > 1:
        logits = torch.cat([logits[:, :1], logits], dim=1)  # position 0 reuses its own output
    return logits, out


def truncate_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Logits with everything outside the top-p nucleus (the most probable tokens whose cumulative
    probability first reaches top_p) and outside the top k set to the dtype's minimum."""
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        above = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        drop = torch.zeros_like(above)
        drop[..., 1:] = above[..., :-1]  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    return logits
