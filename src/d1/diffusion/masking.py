"""The forward (noising) processes of masked diffusion: SFT's random-ratio completion masking and RL's prompt masking.

Pure tensor functions. Randomness comes from an explicit `torch.Generator` when one is given (else torch's
global RNG, which `transformers.Trainer` saves in its checkpoints).
"""

from __future__ import annotations

import torch

SFT_EPS = 1e-3
"""Smallest masking ratio in SFT: t' = (1 - eps) t + eps keeps 1/t' finite (LLaDA, d1)."""


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) draws on `like`'s device; with a generator the draw happens on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def noise_completion(
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    mask_token_id: int,
    t: torch.Tensor | None = None,
    eps: float = SFT_EPS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA's SFT forward process: each completion token becomes `mask_token_id` with probability t'.

    `t` [B] defaults to U(0, 1); t' = (1 - eps) t + eps. Prompt tokens (position < prompt_lengths[b]) are
    never masked. Returns (noisy_ids, masked [B, L] bool, t' [B]).
    """
    b, length = input_ids.shape
    if t is None:
        t = _uniform((b,), input_ids, generator)
    t = (1 - eps) * t.to(input_ids.device, torch.float32) + eps
    is_completion = (
        torch.arange(length, device=input_ids.device)[None, :] >= prompt_lengths.to(input_ids.device)[:, None]
    )
    masked = (_uniform((b, length), input_ids, generator) < t[:, None]) & is_completion
    return torch.where(masked, mask_token_id, input_ids), masked, t


def mask_prompt(
    input_ids: torch.Tensor,
    completion_length: int,
    mask_token_id: int,
    p_mask_prompt: float,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """d1's log-prob input: the last `completion_length` tokens fully masked, each prompt token masked with
    probability `p_mask_prompt` (padding, where `attention_mask` marks it, is left alone)."""
    b, length = input_ids.shape
    prompt_length = length - completion_length
    is_prompt = torch.arange(length, device=input_ids.device)[None, :] < prompt_length
    masked = (_uniform((b, length), input_ids, generator) < p_mask_prompt) & is_prompt
    if attention_mask is not None:
        masked &= attention_mask.bool()
    masked |= ~is_prompt
    return torch.where(masked, mask_token_id, input_ids)
