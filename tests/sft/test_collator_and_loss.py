"""The SFT forward process and loss on hand-worked cases."""

from __future__ import annotations

import math

import torch

from d1.diffusion.losses import IGNORE_INDEX, masked_sft_loss
from d1.sft.collator import MaskedDiffusionCollator


def test_collator_masks_only_completion_and_pads_with_eos() -> None:
    collator = MaskedDiffusionCollator(eos_token_id=1, mask_token_id=9, max_length=12)
    features = [
        {"input_ids": [5, 6, 7, 2, 3], "prompt_length": 3},
        {"input_ids": [5, 6, 2, 3, 4, 4], "prompt_length": 2},
    ]
    seen = set()
    for epoch in range(20):
        collator.epoch = epoch
        batch = collator(features)
        seen.add(tuple(batch["t"].tolist()))
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == (2, 12)
        assert torch.equal(ids[0, :3], torch.tensor([5, 6, 7])) and torch.equal(
            ids[1, :2], torch.tensor([5, 6])
        )
        masked = ids == 9
        assert torch.equal(masked, labels != IGNORE_INDEX)
        clean = torch.tensor([[5, 6, 7, 2, 3] + [1] * 7, [5, 6, 2, 3, 4, 4] + [1] * 6])
        assert torch.equal(labels[masked], clean[masked])
        assert torch.equal(ids[~masked], clean[~masked])
        assert batch["num_completion_tokens"].item() == (12 - 3) + (12 - 2)
        assert ((batch["t"] >= 1e-3) & (batch["t"] <= 1)).all()
    assert len(seen) == 20  # fresh noise every epoch
    collator.epoch = 3
    assert torch.equal(collator(features)["input_ids"], collator(features)["input_ids"])  # reproducible


def test_fixed_t_gives_expected_masking_extremes() -> None:
    collator = MaskedDiffusionCollator(eos_token_id=1, mask_token_id=9, max_length=6)
    batch = collator(
        [
            {"input_ids": [4, 4, 4], "prompt_length": 2, "t": 1.0},
            {"input_ids": [4, 4], "prompt_length": 1, "t": 0.0},
        ]
    )
    assert torch.equal(batch["input_ids"][0], torch.tensor([4, 4, 9, 9, 9, 9]))
    assert torch.allclose(batch["t"], torch.tensor([1.0, 1e-3]))


def test_loss_matches_hand_computation() -> None:
    # vocab 2; logits favour token 0 with p = 3/4 everywhere
    logits = torch.tensor([math.log(3.0), 0.0]).expand(2, 4, 2).clone()
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[0, 2] = 0  # CE = -log(3/4)
    labels[0, 3] = 1  # CE = -log(1/4)
    labels[1, 1] = 1  # CE = -log(1/4)
    t = torch.tensor([0.5, 0.25])
    loss, unscaled = masked_sft_loss(logits, labels, t, num_completion_tokens=5)
    ce0, ce1 = -math.log(0.75), -math.log(0.25)
    expected = ((ce0 + ce1) / 0.5 + ce1 / 0.25) / 5
    assert abs(loss.item() - expected) < 1e-6
    assert abs(unscaled.item() - (ce0 + 2 * ce1) / 3) < 1e-6
