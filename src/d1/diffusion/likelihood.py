"""Per-token log-likelihood estimates of a completion under a masked diffusion model.

d1's `one_step` estimate scores a completion with a single forward pass: the completion fully masked, each
prompt token masked with probability `p_mask_prompt` (a cheap, randomised estimate of log pi(o_k | q)).
`coupled` (DiffuCoder's coupled sampling) masks a random fraction t of the completion and, in the same
batched call, the complement; each token is scored once, with part of the completion visible, so the
objective also trains the conditionals that iterative decoding uses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.logits import predicting_logits
from d1.diffusion.masking import _uniform, mask_prompt
from d1.diffusion.sampling import resolve_token_id

ESTIMATORS = ("one_step", "coupled")


def per_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    estimator: Literal["one_step", "coupled"] = "one_step",
) -> torch.Tensor:
    """Float32 log-probabilities [B, completion_length] of the last `completion_length` tokens of `input_ids`
    given the masked input (`one_step`: d1's `_get_per_token_logps`; `coupled`: see the module docstring);
    differentiable. `attention_mask` [B, L] marks padding. Every draw comes from `generator`."""
    b, length = input_ids.shape
    if not 0 < completion_length <= length:
        raise ValueError(f"completion_length={completion_length} must be in [1, {length}] (input length).")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}."
        )
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; use 'one_step' (d1) or 'coupled'.")
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    noisy = mask_prompt(input_ids, completion_length, mask_id, p_mask_prompt, generator, attention_mask)
    targets = input_ids[:, -completion_length:]
    if estimator == "one_step":
        return -_nll(_completion_logits(model, noisy, attention_mask, completion_length), targets)
    t = _uniform((b, 1), input_ids, generator)
    chosen = _uniform((b, completion_length), input_ids, generator) < t
    halves = [noisy.clone(), noisy.clone()]
    halves[0][:, -completion_length:] = torch.where(chosen, mask_id, targets)
    halves[1][:, -completion_length:] = torch.where(chosen, targets, mask_id)
    both_mask = None if attention_mask is None else attention_mask.repeat(2, 1)
    logits = _completion_logits(model, torch.cat(halves), both_mask, completion_length)
    nll = _nll(logits, targets.repeat(2, 1))
    return -torch.where(chosen, nll[:b], nll[b:])


def _completion_logits(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None, completion_length: int
) -> torch.Tensor:
    """Logits [B, completion_length, V] predicting the last `completion_length` columns (realigned for a
    shifted model); only those are computed when the model takes `logits_to_keep`."""
    return predicting_logits(model, ids, completion_length, attention_mask)[0]


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float32 per-token cross-entropy [B, T] of `targets` under `logits` [B, T, V]."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return nll.view_as(targets)
