"""`d1 sft` on block-diffusion models (LLaDA 2.x, SDAR): dFactory's collator by hand, the block size each model
gets and the ones refused before loading, and short runs on the tiny LLaDA 2.x (full and LoRA) and SDAR."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d1.diffusion.losses import IGNORE_INDEX
from d1.models.loading import load_config
from d1.sft.collator import BlockDiffusionCollator
from d1.sft.run import run_sft
from tests.sft.test_sft_run import config_of, sft_argv

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_block_collator_pads_with_eos_and_masks_the_completion_in_the_noise_range() -> None:
    collator = BlockDiffusionCollator(eos_token_id=1, mask_token_id=9, max_length=8, noise_range=(0.5, 0.5))
    features = [{"input_ids": [5, 6, 7, 2, 3], "prompt_length": 3}, {"input_ids": [5, 2], "prompt_length": 1}]
    batch = collator(features)
    assert batch["clean_ids"].tolist() == [[5, 6, 7, 2, 3, 1, 1, 1], [5, 2, 1, 1, 1, 1, 1, 1]]
    masked = batch["input_ids"] == 9
    assert not masked[0, :3].any() and not masked[1, :1].any()
    assert torch.equal(masked, batch["labels"] != IGNORE_INDEX)
    assert torch.equal(batch["labels"][masked], batch["clean_ids"][masked])
    assert torch.equal(batch["input_ids"][~masked], batch["clean_ids"][~masked])
    assert torch.equal(collator(features)["input_ids"], batch["input_ids"])  # seeded by (seed, epoch, rows)
    fixed = BlockDiffusionCollator(1, 9, 8, noise_range=(0.0, 1.0))([{**f, "t": 1.0} for f in features])
    assert fixed["input_ids"].tolist() == [[5, 6, 7, 9, 9, 9, 9, 9], [5, 9, 9, 9, 9, 9, 9, 9]]  # t 1: the top


def test_block_size_is_the_models_or_block_length_and_must_divide_max_length(tmp_path: Path) -> None:
    llada2, sdar = load_config(str(FIXTURES / "llada2_tiny")), load_config(str(FIXTURES / "sdar_tiny"))
    llada = load_config(str(FIXTURES / "llada2_tiny"))
    llada.block_diffusion = False  # an instance attribute hides the class's: a full-attention model
    out = ("--output_dir", str(tmp_path))
    assert config_of(*out, "--max_length", "64").block_size_for(llada2) == 32  # dFactory's default
    assert config_of(*out, "--max_length", "48", "--block_length", "16").block_size_for(llada2) == 16
    assert config_of(*out, "--max_length", "12").block_size_for(sdar) == 4  # SDAR's config.block_size
    assert config_of(*out, "--max_length", "12", "--block_length", "4").block_size_for(sdar) == 4
    assert config_of(*out).block_size_for(llada) is None
    refused = [
        (llada2, ("--max_length", "48"), r"max_length=48 is not a multiple of the block size 32.*--max_length 64"),
        (sdar, ("--max_length", "10"), r"max_length=10 .* block size 4 .*--max_length 12\.$"),
        (sdar, ("--max_length", "16", "--block_length", "8"), r"block_length=8: sdar was trained with blocks of 4"),
        (llada, ("--block_length", "8"), r"block_length=8: .* full-attention .* drop --block_length"),
    ]
    for model_config, flags, message in refused:
        with pytest.raises(ValueError, match=message):
            config_of(*out, *flags).block_size_for(model_config)
    with pytest.raises(ValueError, match="noise_range_low=0.9, noise_range_high=0.8"):
        config_of(*out, "--noise_range_low", "0.9")


def test_refused_block_size_stops_before_loading(tiny_llada2_dir, arithmetic_jsonl, tmp_path, monkeypatch) -> None:
    import d1.sft.run

    def never(*args, **kwargs):
        raise AssertionError("weights loaded before the block size was checked")

    monkeypatch.setattr(d1.sft.run, "load_trainable_model", never)
    with pytest.raises(ValueError, match="max_length=48 is not a multiple of the block size 32"):
        run_sft(config_of(*sft_argv(tiny_llada2_dir, arithmetic_jsonl, tmp_path)))


def first_and_last(trainer) -> tuple[float, float]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20
    assert all(h["unscaled_loss"] == round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h)
    return sum(losses[:4]) / 4, sum(losses[-4:]) / 4


def test_block_sft_lowers_loss(tiny_llada2_dir, arithmetic_jsonl, tmp_path) -> None:
    """20 steps of full fine-tuning under dFactory's objective (no 1/t: the logged unscaled CE is the loss),
    with the held-out rows scored at fixed ratios."""
    argv = sft_argv(tiny_llada2_dir, arithmetic_jsonl, tmp_path, "--max_steps", "20", "--max_length", "64",
                    "--eval_fraction", "0.1", "--eval_steps", "10")  # fmt: skip
    trainer = run_sft(config_of(*argv))
    assert trainer.block_size == 32
    first, last = first_and_last(trainer)
    assert last < 0.6 * first  # measured: 3.9 -> 2.0
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_block_sft_with_lora_lowers_loss(tiny_llada2_dir, arithmetic_jsonl, tmp_path) -> None:
    argv = [a for a in sft_argv(tiny_llada2_dir, arithmetic_jsonl, tmp_path, "--max_steps", "20") if a != "--no-lora"]
    trainer = run_sft(config_of(*argv, "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "3e-2",
                                "--block_length", "16"))  # fmt: skip
    assert trainer.block_size == 16
    first, last = first_and_last(trainer)
    assert last < first - 0.15  # measured: 4.36 -> 4.12 (LoRA on query_key_value only)
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_sdar_trains_with_its_own_blocks_and_a_resume_keeps_the_block_settings(
    tiny_sdar_dir, arithmetic_jsonl, tmp_path
) -> None:
    argv = sft_argv(tiny_sdar_dir, arithmetic_jsonl, tmp_path, "--max_steps", "2", "--save_steps", "2")
    trainer = run_sft(config_of(*argv))
    assert trainer.block_size == 4 and trainer.state.log_history[0]["loss"] > 0
    with pytest.raises(ValueError, match=r"other settings: noise_range_high 0.8 -> 0.7\. "):
        run_sft(config_of(*argv, "--resume_from_checkpoint", "auto", "--noise_range_high", "0.7"))
