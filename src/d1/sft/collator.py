"""The SFT data collators: pad to `max_length` with EOS (as d1, so the model learns to stop) and apply a
forward process to the completion: LLaDA's (`MaskedDiffusionCollator`) or block diffusion's
(`BlockDiffusionCollator`, dFactory's, for LLaDA 2.x and SDAR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d1.diffusion.block_losses import NOISE_RANGE, noise_blocks
from d1.diffusion.losses import IGNORE_INDEX
from d1.diffusion.masking import noise_completion
from d1.utils import derive_seed


@dataclass
class MaskedDiffusionCollator:
    """Features `{"input_ids": list[int], "prompt_length": int, "index": int, "t"?: float}` -> a noised batch.

    Returns `input_ids` (noised), `labels` (clean token where masked, else IGNORE_INDEX), `t` (each row's
    masking ratio t') and `num_completion_tokens` (non-prompt tokens of the batch, the loss denominator).
    A feature's own `t` (the evaluation split's fixed ratios) replaces the random draw for that row.
    The noise is drawn from a generator seeded by (seed, epoch, the rows' indices): fresh every epoch, and
    identical when a run resumes from a checkpoint (the global RNG is not, because the data loader
    prefetches batches before a checkpoint saves it).
    """

    eos_token_id: int
    mask_token_id: int
    max_length: int
    seed: int = 0
    epoch: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        clean, prompt_lengths, t, generator = self.prepare(features)
        noisy, masked, t = noise_completion(
            clean, prompt_lengths, self.mask_token_id, t=t, generator=generator
        )
        return {
            "input_ids": noisy,
            "labels": torch.where(masked, clean, IGNORE_INDEX),
            "t": t,
            "num_completion_tokens": (self.max_length - prompt_lengths).clamp(min=0).sum(),
        }

    def prepare(
        self, features: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator]:
        """The EOS-padded clean rows [B, max_length], prompt lengths, the features' fixed `t` (None unless every
        row has one) and the batch's noise generator."""
        clean = torch.full((len(features), self.max_length), self.eos_token_id, dtype=torch.long)
        for row, feature in enumerate(features):
            ids = feature["input_ids"][: self.max_length]
            clean[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        prompt_lengths = torch.tensor([f["prompt_length"] for f in features], dtype=torch.long)
        t = torch.tensor([float(f["t"]) for f in features]) if all("t" in f for f in features) else None
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, self.epoch, [f.get("index", i) for i, f in enumerate(features)])
        )
        return clean, prompt_lengths, t, generator


@dataclass
class BlockDiffusionCollator(MaskedDiffusionCollator):
    """The same padding and seeding, with dFactory's forward process (`noise_blocks`): one ratio per row,
    uniform in `noise_range`, completion tokens masked independently. Returns `input_ids` (noisy),
    `clean_ids` and `labels` (clean token where masked, else IGNORE_INDEX). A feature's fixed `t` in [0, 1]
    (the evaluation split's) picks the ratio low + (high - low) t."""

    noise_range: tuple[float, float] = NOISE_RANGE

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        clean, prompt_lengths, t, generator = self.prepare(features)
        noisy, masked, _ = noise_blocks(
            clean, prompt_lengths, self.mask_token_id, self.noise_range, t=t, generator=generator
        )
        return {"input_ids": noisy, "clean_ids": clean, "labels": torch.where(masked, clean, IGNORE_INDEX)}
