"""`MaskedSFTTrainer`: a `transformers.Trainer` whose loss is LLaDA's masked diffusion loss.

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
from d1.diffusion.logits import predicting_logits
from d1.diffusion.losses import masked_sft_loss


class CollatorEpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so its noise is fresh each epoch yet reproducible on resume."""

    def __init__(self, collator: Any):
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.collator.epoch = math.floor(state.epoch or 0)


class MaskedSFTTrainer(Trainer):
    """Trainer for completion-only masked SFT; logs the 1/t-weighted loss and the plain masked CE."""

    loss_is_scaled_for_ga = False  # the loss is a per-micro-batch mean: Trainer divides by accumulation steps

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
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
        labels, t = inputs.pop("labels"), inputs.pop("t")
        num_completion_tokens = inputs.pop("num_completion_tokens")
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
