"""d1's one-step per-token log-likelihood of a completion under a masked diffusion model.

diffu-GRPO scores a completion with a single forward pass: the completion fully masked, each prompt token
masked with probability `p_mask_prompt` (a cheap, randomised estimate of log pi(o_k | q)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.masking import mask_prompt
from d1.diffusion.sampling import resolve_token_id


def per_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 log-probabilities [B, completion_length] of the last `completion_length` tokens of `input_ids`
    given the masked input (d1's `_get_per_token_logps`); differentiable. `attention_mask` [B, L] marks padding."""
    b, length = input_ids.shape
    if not 0 < completion_length <= length:
        raise ValueError(f"completion_length={completion_length} must be in [1, {length}] (input length).")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}."
        )
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    noisy = mask_prompt(input_ids, completion_length, mask_id, p_mask_prompt, generator, attention_mask)
    logits = model(noisy, attention_mask=attention_mask).logits[:, -completion_length:]
    targets = input_ids[:, -completion_length:]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return -nll.view(b, completion_length)
