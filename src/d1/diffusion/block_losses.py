"""Block-diffusion SFT (LLaDA 2.x, SDAR): the noisy sequence and the clean one in one forward pass.

The input is [noisy | clean] (length 2n), both halves at positions 0..n-1, under a mask on a grid of
`block_size` from position 0 (prompt included): a noisy token sees its own noisy block and the clean blocks
before it; a clean token sees the clean blocks up to its own. So one pass denoises every block given the
clean blocks before it (generation's view), and the loss reads the noisy half only.

Restated from inclusionAI/dFactory at commit 92b6890808088b112fcf5fc73a341b78b6ab76bf:
- `tasks/train_llada2_bd.py`: the mask `block_diffusion_mask` (lines 122-166) over 2n x 2n with
  n = max_seq_len (364-375); the input [noisy | clean] with position ids arange(n) twice (424-434); the logits
  of the noisy half (447-448); with `same_token_labels` (set true by the SFT yamls) the loss is the summed CE of
  the labelled positions over their count, logits unshifted, no 1/t weight (452-458), divided by the number of
  accumulated micro-batches (458).
- `tasks/dataset/data_transform.py`: `sft_noise_transition` (102-122): one ratio per sample, uniform in
  [noise_range_low, noise_range_high], each maskable token masked independently with that probability;
  maskable = position >= prompt length, so padding after the answer is maskable too (31); labels are -100 on
  the prompt and wherever the token was not masked (28-29, 40-41).
- `configs/sft/llada2_mini_bd_sft.yaml`: block_size 32, noise range 0.3-0.8, same_token_labels true.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.logits import predicting_logits
from d1.diffusion.losses import IGNORE_INDEX
from d1.diffusion.masking import _uniform, noise_completion

NOISE_RANGE = (0.3, 0.8)
"""dFactory's noise range (`noise_range_low`, `noise_range_high`: its defaults and its SFT yamls)."""

BLOCK_LENGTH = 32
"""dFactory's block size for LLaDA2.0-mini/flash SFT (`configs/sft/llada2_*_bd_sft.yaml`)."""


def stream_mask(blocks: torch.Tensor, clean: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """dFactory's block-diffusion attention [B, 1, M, M] (True = attend) over columns that each carry a block
    index `blocks` [B, M] and a stream, `clean` ([M] or [B, M]: clean, else noisy): a query sees the keys of its
    own block in its own stream and the clean keys of earlier blocks. `real` [B, M] (False = padding) hides
    padding keys."""
    same = (blocks[:, :, None] == blocks[:, None, :]) & (clean[..., :, None] == clean[..., None, :])
    mask = same | ((blocks[:, :, None] > blocks[:, None, :]) & clean[..., None, :])
    if real is not None:
        mask &= real.bool()[:, None, :]
    return mask[:, None]


def two_stream_mask(blocks: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The [noisy | clean] mask [B, 1, 2n, 2n] (`stream_mask`) from each column's block index [B, n]: query and
    key in the same block of the same half, or the key in an earlier CLEAN block. `real` [B, n] (False =
    padding) hides padding keys in both halves."""
    n = blocks.shape[1]
    clean = torch.arange(2 * n, device=blocks.device) >= n
    both = None if real is None else torch.cat([real, real], dim=1)
    return stream_mask(torch.cat([blocks, blocks], dim=1), clean, both)


def block_diffusion_mask(length: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """dFactory's training mask [1, 1, 2n, 2n] for n = `length` tokens on a grid of `block_size` from 0."""
    return two_stream_mask((torch.arange(length, device=device) // block_size)[None])


def noise_blocks(
    clean: torch.Tensor,
    prompt_lengths: torch.Tensor,
    mask_token_id: int,
    noise_range: tuple[float, float] = NOISE_RANGE,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dFactory's forward process: row b's completion tokens (columns >= prompt_lengths[b]; real ones only
    when `attention_mask` marks padding) become `mask_token_id` independently with probability r_b.

    r_b = low + (high - low) t_b, with `t` [B] in [0, 1] (default U(0, 1): r uniform in the noise range, as
    dFactory's). Returns (noisy_ids, masked [B, L] bool, r [B]).
    """
    low, high = noise_range
    if t is None:
        t = _uniform((len(clean),), clean, generator)
    ratio = low + (high - low) * t.to(clean.device, torch.float32)
    _, masked, ratio = noise_completion(clean, prompt_lengths, mask_token_id, t=ratio, eps=0.0, generator=generator)
    if attention_mask is not None:
        masked &= attention_mask.bool()
    return torch.where(masked, mask_token_id, clean), masked, ratio


def block_logits(
    model: nn.Module,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """Logits [B, n, V] of the noisy half from one forward pass over [noisy | clean] (and the model output).

    Without `attention_mask` every column is a token (d1's SFT rows, right-padded with EOS, which is trained);
    with it (0/1 [B, n]) padding on either side is hidden and each row's positions and block grid start at its
    first real token (position = cumsum - 1), so a padded row gives the logits it gives alone.
    """
    b, n = noisy.shape
    if attention_mask is None:
        positions = torch.arange(n, device=noisy.device).expand(b, n)
        mask = block_diffusion_mask(n, block_size, noisy.device).expand(b, -1, -1, -1)
    else:
        real = attention_mask.bool()
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        mask = two_stream_mask(positions // block_size, real)
    return predicting_logits(
        model,
        torch.cat([noisy, clean], dim=1),
        slice(0, n),
        attention_mask=mask,
        position_ids=torch.cat([positions, positions], dim=1),
    )


def block_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dFactory's loss: CE summed over the labelled positions (labels != IGNORE_INDEX), over their count."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)
    return ce / (labels != IGNORE_INDEX).sum().clamp(min=1)


def block_sft_loss(
    model: nn.Module,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    labels: torch.Tensor,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """Block-diffusion SFT loss of a noised batch (`block_ce` of `block_logits`) and the model output."""
    logits, output = block_logits(model, noisy, clean, block_size, attention_mask)
    return block_ce(logits, labels), output
