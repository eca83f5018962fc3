"""`SFTConfig`: every `TrainingArguments` field plus d1's SFT options, with d1's defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments

from d1.diffusion.block_losses import BLOCK_LENGTH, NOISE_RANGE
from d1.models.loading import LORA_TARGETS_HELP, SFT_LORA, non_reentrant
from d1.utils import check_counts, cpu_only_launch


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class SFTConfig(TrainingArguments):
    """Masked SFT options. The defaults are d1's `sft_train.py` (LLaDA-8B-Instruct on s1K, LoRA r 128).

    Checkpoints and the final model go to `output_dir/job_name`.
    """

    ALIASES: ClassVar[dict[str, str]] = {"--model_name": "--model_path"}
    lora_scope: ClassVar[str] = "attention"
    """An empty `lora_target_modules` adapts the family's query/key/value projections (d1's SFT)."""
    """Older spellings that still work: d1's `--model_name`."""

    model_path: str = field(
        default="GSAI-ML/LLaDA-8B-Instruct", metadata={"help": "Hub name or local folder (alias --model_name, d1's)."}
    )
    train_data: str = field(
        default="simplescaling/s1K",
        metadata={"help": "Hub dataset name or a local json/jsonl/csv/parquet file."},
    )
    job_name: str = field(
        default="llada-s1k", metadata={"help": "Run name; outputs go to output_dir/job_name."}
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "s1k, numina-lean, generic (prompt/response or messages) or text (raw `text` column, every "
            "token maskable: masked-diffusion pre-training); default: detected from train_data, else generic."
        },
    )
    prompt_field: str | None = field(default=None, metadata={"help": "Generic preset: the prompt column."})
    response_field: str | None = field(
        default=None, metadata={"help": "Generic preset: the response column."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Generic preset: optional system message."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    max_length: int = field(
        default=4096, metadata={"help": "Sequence length; rows are padded with EOS to it."}
    )
    block_length: int | None = field(
        default=None,
        metadata={
            "help": "Block-diffusion models (LLaDA 2.x, SDAR) only: the block size of their SFT; it must divide "
            f"max_length. Default: the model config's block_size (SDAR), else {BLOCK_LENGTH} (dFactory's "
            "LLaDA2.0-mini/flash SFT)."
        },
    )
    noise_range_low: float = field(
        default=NOISE_RANGE[0],
        metadata={
            "help": "Block-diffusion SFT: each row's masking ratio is uniform in [noise_range_low, "
            "noise_range_high] (dFactory's 0.3-0.8; LLaDA's objective draws t from U(0, 1) instead)."
        },
    )
    noise_range_high: float = field(
        default=NOISE_RANGE[1], metadata={"help": "Block-diffusion SFT: the top of the masking-ratio range."}
    )
    truncation: str = field(
        default="truncate", metadata={"help": "truncate: cut rows longer than max_length; drop: skip them."}
    )
    eval_fraction: float = field(
        default=0.01, metadata={"help": "Held-out fraction (d1: 1%%), scored with fixed t; 0 turns it off."}
    )
    lora: bool = field(
        default=True, metadata={"help": "Train a LoRA adapter (d1's default) instead of all weights."}
    )
    lora_r: int = field(default=SFT_LORA["r"], metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=SFT_LORA["lora_alpha"], metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=SFT_LORA["lora_dropout"], metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"{LORA_TARGETS_HELP} Default (empty): the model family's query/key/value projections (d1's "
            "SFT: q_proj, k_proj, v_proj; LLaDA 2.x: its fused query_key_value)."
        },
    )
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Mask token id when neither tokenizer nor config defines one."}
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, bfloat16 or float32."})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit base weights (CUDA + bitsandbytes)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the checkpoint's own model code."}
    )
    debugging: bool = field(default=False, metadata={"help": "d1's flag: turn wandb off."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the checkpoints already in the output folder and start over."},
    )

    # d1's TrainingArguments choices
    output_dir: str = field(default="sft_output", metadata={"help": "Parent folder of output_dir/job_name."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate of AdamW."})
    num_train_epochs: float = field(
        default=20.0,
        metadata={"help": "Passes over the training rows (alias --num_epochs); max_steps > 0 wins."},
    )
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Rows per device per micro-batch (alias --batch_size)."}
    )
    gradient_accumulation_steps: int = field(
        default=4, metadata={"help": "Micro-batches per optimizer step (alias --grad_accum_steps)."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    eval_strategy: str = field(
        default="steps",
        metadata={
            "help": "When to score the held-out rows: steps, epoch or no (always no when eval_fraction is 0)."
        },
    )
    eval_steps: float | None = field(
        default=100, metadata={"help": "Steps between held-out scores (below 1: a fraction of all steps)."}
    )
    save_steps: float = field(
        default=100, metadata={"help": "Steps between checkpoints (below 1: a fraction of all steps)."}
    )
    save_total_limit: int | None = field(
        default=20, metadata={"help": "Checkpoints kept in output_dir/job_name; older ones are deleted."}
    )
    logging_steps: float = field(default=2, metadata={"help": "Steps between logged losses."})
    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "Loggers: tensorboard, wandb, none... (--debugging drops wandb)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay false: d1's collator reads the prompt-length column."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"],
        metadata={"help": "Batch keys holding the labels (d1's collator: labels)."},
    )
    bf16: bool = field(
        default_factory=bf16_available,
        metadata={"help": "bfloat16 mixed precision; default: on where CUDA has it."},
    )

    def __post_init__(self) -> None:
        if not os.path.basename(os.path.normpath(self.output_dir)) == self.job_name:
            self.output_dir = os.path.join(self.output_dir, self.job_name)
        if self.truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation={self.truncation!r} is unknown; use 'truncate' or 'drop'.")
        if self.debugging:
            reports = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
            self.report_to = [r for r in reports if r not in ("wandb", "all")] or "none"
        check_counts(
            {
                "per_device_train_batch_size (--batch_size)": self.per_device_train_batch_size,
                "gradient_accumulation_steps (--grad_accum_steps)": self.gradient_accumulation_steps,
            }
        )
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(
                f"eval_fraction={self.eval_fraction} must be in [0, 1): it is the share of rows held out of "
                "training (d1: 0.01); pass e.g. 0.01, or 0 for no held-out set."
            )
        if self.eval_fraction == 0:
            self.eval_strategy = "no"
        if not 0 <= self.noise_range_low <= self.noise_range_high <= 1 or self.noise_range_high == 0:
            raise ValueError(
                f"noise_range_low={self.noise_range_low}, noise_range_high={self.noise_range_high}: need "
                "0 <= low <= high <= 1 and high > 0 (masking ratios; dFactory: 0.3 and 0.8)."
            )
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"block_length={self.block_length} must be at least 1 (dFactory: {BLOCK_LENGTH}).")
        self.use_cpu = self.use_cpu or cpu_only_launch()
        super().__post_init__()
        # checkpointing is always non-reentrant (under either name of the option)
        self.activation_checkpointing_kwargs = non_reentrant(self.activation_checkpointing_kwargs)
        self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs

    def block_size_for(self, model_config: Any) -> int | None:
        """The block size of block-diffusion SFT for this model (None for a full-attention one): the config's
        `block_size` (SDAR), else `block_length` (default dFactory's 32). Refuses, before any weights load, a
        `block_length` the model cannot use and a block size that does not divide `max_length`."""
        name = getattr(model_config, "model_type", "this model")
        if not getattr(model_config, "block_diffusion", False):
            if self.block_length is not None:
                raise ValueError(
                    f"block_length={self.block_length}: {name} is a full-attention model trained with LLaDA's "
                    "masked objective, which has no blocks; drop --block_length."
                )
            return None
        own = getattr(model_config, "block_size", None)
        if own is not None and self.block_length not in (None, own):
            raise ValueError(
                f"block_length={self.block_length}: {name} was trained with blocks of {own} (its config's "
                "block_size), which its sampler uses too; drop --block_length or pass "
                f"--block_length {own}."
            )
        size = own or self.block_length or BLOCK_LENGTH
        if self.max_length % size:
            fitting = -(-self.max_length // size) * size
            raise ValueError(
                f"max_length={self.max_length} is not a multiple of the block size {size} ({name}): the block grid "
                f"must tile the sequence; pass --max_length {fitting}"
                + ("." if own else f" or a --block_length that divides {self.max_length}.")
            )
        return size
