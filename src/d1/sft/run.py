"""`run_sft`: validate everything cheap first (output dir, tokenizer, mask token, data, block size, LoRA
targets), then load the model and train with `MaskedSFTTrainer` (the model family picks the objective: LLaDA's
masked loss, or block diffusion's for LLaDA 2.x and SDAR)."""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase

from d1.cluster import PreemptionCallback
from d1.data.sft import (
    SFTDataReport,
    detect_preset,
    eval_split,
    examples_from_rows,
    texts_from_rows,
    tokenize_examples,
    tokenize_texts,
)
from d1.data.sources import load_rows
from d1.models.loading import (
    check_model_before_loading,
    load_config,
    load_tokenizer,
    load_trainable_model,
    resolve_mask_token_id,
)
from d1.sft.collator import BlockDiffusionCollator, MaskedDiffusionCollator
from d1.sft.config import SFTConfig
from d1.sft.trainer import MaskedSFTTrainer
from d1.utils import (
    check_output_dir,
    check_training_length,
    check_writable,
    claim_output_dir,
    run_settings,
    say,
    train_and_save,
)


def prepare_sft_data(
    config: SFTConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[datasets.Dataset, datasets.Dataset | None, SFTDataReport]:
    """Load, format, tokenise and split the training data; every data error surfaces here, before the model."""
    preset = detect_preset(config.train_data, config.preset)
    rows = load_rows(config.train_data, split=config.dataset_split)
    if preset == "text":
        report = SFTDataReport(rows=len(rows))
        items = tokenize_texts(texts_from_rows(rows, config.train_data), tokenizer, config.max_length, config.truncation, report)
    else:
        examples, skipped = examples_from_rows(
            rows, preset, config.train_data, config.prompt_field, config.response_field, config.system_prompt
        )
        report = SFTDataReport(rows=len(rows), skipped_no_response=skipped)
        items = tokenize_examples(examples, tokenizer, config.max_length, config.truncation, report)
    if not items:
        raise ValueError(f"No usable rows in {config.train_data!r} ({report.summary()}).")
    train, held_out = eval_split(items, config.eval_fraction, config.seed)
    eval_set = datasets.Dataset.from_list(held_out) if held_out else None
    return datasets.Dataset.from_list(train), eval_set, report


def run_sft(config: SFTConfig) -> MaskedSFTTrainer:
    """Train; returns the trainer (its `state.log_history` holds the loss curve)."""
    check_writable(config.output_dir, "output_dir")
    check_training_length(config)
    settings = run_settings(config)
    checkpoint = check_output_dir(config, settings)
    tokenizer = load_tokenizer(config.model_path, trust_remote_code=config.trust_remote_code)
    model_config = load_config(config.model_path, config.trust_remote_code)
    mask_token_id = resolve_mask_token_id(tokenizer, model_config, config.mask_token_id)
    block_size = config.block_size_for(model_config)
    train_set, eval_set, report = prepare_sft_data(config, tokenizer)
    say(
        f"SFT data {config.train_data}: {report.summary()}; {len(train_set)} train, "
        f"{len(eval_set) if eval_set is not None else 0} held out"
    )
    if report.truncated > report.rows // 10:
        say(
            f"warning: {report.truncated} of {report.rows} rows are longer than max_length={config.max_length} and "
            "lose their end, so the model never sees where answers stop; raise --max_length (or --truncation drop)"
        )
    if block_size is not None:
        say(
            f"{model_config.model_type} is a block-diffusion model: block-diffusion SFT (dFactory's), blocks of "
            f"{block_size}, masking ratios in [{config.noise_range_low}, {config.noise_range_high}]"
        )
    if eval_set is None and config.eval_strategy != "no":
        config.eval_strategy = "no"
    check_model_before_loading(model_config, config)
    claim_output_dir(config, settings)

    model = load_trainable_model(config.model_path, config, mask_token_id)
    collator = (
        MaskedDiffusionCollator(tokenizer.eos_token_id, mask_token_id, config.max_length, seed=config.seed)
        if block_size is None
        else BlockDiffusionCollator(
            tokenizer.eos_token_id, mask_token_id, config.max_length, seed=config.seed,
            noise_range=(config.noise_range_low, config.noise_range_high),
        )
    )  # fmt: skip
    trainer = MaskedSFTTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[PreemptionCallback()],
        block_size=block_size,
    )
    train_and_save(trainer, checkpoint)
    return trainer


def loss_table(log_history: list[dict]) -> str:
    """The training loss curve as a plain text table (step, loss, unscaled masked CE, learning rate)."""
    rows = [h for h in log_history if "loss" in h]
    lines = [f"{'step':>6} {'loss':>10} {'unscaled':>10} {'lr':>10}"]
    lines += [
        f"{h['step']:>6} {h['loss']:>10.4f} {h.get('unscaled_loss', float('nan')):>10.4f} {h.get('learning_rate', 0):>10.2e}"
        for h in rows
    ]
    return "\n".join(lines)
