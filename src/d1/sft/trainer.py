"""`MaskedSFTTrainer`: a `transformers.Trainer` whose loss is LLaDA's masked diffusion loss, or for a
block-diffusion model (LLaDA 2.x, SDAR) dFactory's block-diffusion loss (`d1.diffusion.block_losses`).

Only public extension points are used (`compute_loss` and `log` overridden, callbacks), so every
`TrainingArguments` option, accelerate/DeepSpeed/FSDP, LoRA and checkpointing work as in any Trainer run;
`CompleteCheckpointsCallback` marks each checkpoint complete and does the `save_total_limit` rotation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from d1.cluster import CompleteCheckpointsCallback
from d1.diffusion.block_diffusion import is_block_diffusion
from d1.diffusion.block_losses import block_sft_loss
from d1.diffusion.logits import predicting_logits
from d1.diffusion.losses import masked_sft_loss


class CollatorEpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so its noise is fresh each epoch yet reproducible on resume."""

    def __init__(self, collator: Any):
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.collator.epoch = math.floor(state.epoch or 0)


class MaskedSFTTrainer(Trainer):
    """Trainer for completion-only masked SFT; logs the 1/t-weighted loss and the plain masked CE.

    `block_size` (given exactly for a block-diffusion model, with `BlockDiffusionCollator`'s batches) switches
    the loss to block diffusion's: one pass over [noisy | clean], CE over the masked tokens / their count
    (no 1/t weight, so the logged unscaled loss equals the loss)."""

    loss_is_scaled_for_ga = False  # the loss is a per-micro-batch mean: Trainer divides by accumulation steps

    def __init__(self, *args: Any, block_size: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if is_block_diffusion(self.model) != (block_size is not None):
            raise ValueError(
                f"block_size={block_size} for a {'block-diffusion' if block_size is None else 'full-attention'} "
                "model: pass the block size exactly for block-diffusion models (SFTConfig.block_size_for)."
            )
        self.block_size = block_size
        self._unscaled: list[float] = []
        self.add_callback(CompleteCheckpointsCallback(self.args))
        if hasattr(self.data_collator, "epoch"):
            self.add_callback(CollatorEpochCallback(self.data_collator))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.pop("labels")
        if self.block_size is not None:
            loss, outputs = block_sft_loss(model, inputs["input_ids"], inputs["clean_ids"], labels, self.block_size)
            unscaled = loss.detach()
        else:
            t, num_completion_tokens = inputs.pop("t"), inputs.pop("num_completion_tokens")
            logits, outputs = predicting_logits(model, inputs["input_ids"], slice(0, None))
            loss, unscaled = masked_sft_loss(logits, labels, t, num_completion_tokens)
        if model.training:
            self._unscaled.append(unscaled.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds `unscaled_loss` (mean masked CE since the last log) beside the training loss."""
        if "loss" in logs and self._unscaled:
            logs["unscaled_loss"] = round(sum(self._unscaled) / len(self._unscaled), 4)
            self._unscaled.clear()
        super().log(logs, *args, **kwargs)
