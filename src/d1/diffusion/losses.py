"""Training objectives of masked diffusion LMs: LLaDA's masked SFT loss and diffu-GRPO's clipped loss with KL."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, num_completion_tokens: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA/d1's SFT loss: sum over masked tokens of CE / t', over the number of completion tokens.

    `labels` is the clean token where the position was masked and IGNORE_INDEX elsewhere; `t` [B] is each
    row's masking ratio. Returns (loss, unscaled), unscaled = plain mean CE over masked tokens (for logging).
    """
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX
    )
    ce = ce.view_as(labels)
    loss = (ce / t[:, None]).sum() / num_completion_tokens
    unscaled = ce.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
    return loss, unscaled.detach()


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon: float = 0.5,
    beta: float = 0.04,
    loss_normalization: Literal["token", "sequence"] = "token",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """diffu-GRPO's per-token PPO-clip objective with a k3 KL penalty (d1's `compute_loss`).

    Inputs are [B, T] except `advantages` [B]. `token` normalisation averages over all completion tokens of
    the batch (d1's code); `sequence` averages per sequence, then over sequences (the paper's formula).
    `normalizer` replaces the count averaged over (tokens or sequences) when rows that cannot change the loss
    were left out of the batch. Returns (loss, stats) with the mean KL and the clipped fraction over the
    completion tokens given.
    """
    mask = completion_mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0 and ref_logps is not None:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * kl
    if loss_normalization == "token":
        loss = (per_token * mask).sum() / (normalizer or mask.sum().clamp(min=1))
    elif loss_normalization == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / (normalizer or len(mask))
    else:
        raise ValueError(f"loss_normalization={loss_normalization!r} is unknown; use 'token' or 'sequence'.")
    clipped = (ratio * adv) > (torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    denom = mask.sum().clamp(min=1)
    stats = {
        "kl": ((kl * mask).sum() / denom).detach(),
        "clip_ratio": ((clipped.to(mask.dtype) * mask).sum() / denom).detach(),
    }
    return loss, stats
