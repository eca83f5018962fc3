"""Block-diffusion SFT: the [noisy | clean] mask by hand, the noising, and the loss and its gradients against a
restatement of dFactory's (inclusionAI/dFactory 92b6890, `tasks/train_llada2_bd.py`) on the tiny LLaDA 2.x
and SDAR fixtures; block causality and padding invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import d1
from d1.diffusion.block_losses import block_diffusion_mask, block_logits, block_sft_loss, noise_blocks
from d1.diffusion.losses import IGNORE_INDEX

FIXTURES = Path(__file__).parents[1] / "fixtures"
MASK_ID = 95  # both fixtures' mask token


def test_mask_by_hand_n4_block2() -> None:
    """Columns 0-3 noisy (blocks 0 0 1 1), 4-7 clean (blocks 0 0 1 1)."""
    expected = [
        [1, 1, 0, 0, 0, 0, 0, 0],  # noisy block 0: itself only
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # noisy block 1: itself and clean block 0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # clean block 0: clean block 0
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],  # clean block 1: clean blocks 0 and 1
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    mask = block_diffusion_mask(4, 2)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.bool
    assert mask[0, 0].long().tolist() == expected


def official_mask(n: int, block_size: int) -> torch.Tensor:
    """dFactory's `block_diffusion_mask` formulas evaluated pair by pair: [2n, 2n] bool."""
    mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q in range(2 * n):
        for kv in range(2 * n):
            q_clean, kv_clean = q >= n, kv >= n
            block_q = (q - n) // block_size if q_clean else q // block_size
            block_kv = (kv - n) // block_size if kv_clean else kv // block_size
            diagonal = block_q == block_kv and q_clean == kv_clean
            offset_causal = block_q > block_kv and kv_clean and not q_clean
            causal = block_q >= block_kv and kv_clean and q_clean
            mask[q, kv] = diagonal or offset_causal or causal
    return mask


@pytest.mark.parametrize(("n", "block_size"), [(12, 4), (10, 3), (8, 8), (5, 1)])
def test_mask_equals_the_official_formulas(n: int, block_size: int) -> None:
    assert torch.equal(block_diffusion_mask(n, block_size)[0, 0], official_mask(n, block_size))


def test_noise_masks_completion_only_in_the_noise_range_reproducibly() -> None:
    clean = torch.arange(10, 10 + 2 * 400).view(2, 400)
    prompts = torch.tensor([3, 50])
    noisy, masked, ratio = noise_blocks(clean, prompts, 9, (0.3, 0.8), generator=torch.Generator().manual_seed(0))
    assert ((ratio >= 0.3) & (ratio <= 0.8)).all()
    assert not masked[0, :3].any() and not masked[1, :50].any()
    assert torch.equal(noisy, torch.where(masked, 9, clean))
    for row, start in enumerate(prompts.tolist()):  # per-token Bernoulli(r): the share is r within 5 sigma
        share = masked[row, start:].float().mean()
        sigma = (ratio[row] * (1 - ratio[row]) / (400 - start)) ** 0.5
        assert abs(share - ratio[row]) < 5 * sigma
    again = noise_blocks(clean, prompts, 9, (0.3, 0.8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], noisy)
    _, _, fixed = noise_blocks(clean, prompts, 9, (0.3, 0.8), t=torch.tensor([0.0, 1.0]))
    assert torch.allclose(fixed, torch.tensor([0.3, 0.8]))
    _, all_masked, _ = noise_blocks(clean, prompts, 9, (1.0, 1.0), attention_mask=(clean % 7 != 0).long())
    assert torch.equal(all_masked[0, 3:], clean[0, 3:] % 7 != 0)  # every real completion token, no padding


def dfactory_loss(model: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, prompt: int, block: int) -> torch.Tensor:
    """dFactory's block-diffusion SFT step restated: additive float mask from the formulas, [noisy | clean] with
    arange positions twice, labels -100 on the prompt and on unmasked tokens, CE sum over labelled count."""
    b, n = noisy.shape
    additive = torch.zeros(2 * n, 2 * n).masked_fill(~official_mask(n, block), float("-inf"))
    positions = torch.cat([torch.arange(n), torch.arange(n)]).expand(b, -1)
    logits = model(
        torch.cat([noisy, clean], dim=1), attention_mask=additive.expand(b, 1, -1, -1), position_ids=positions
    ).logits[:, :n]
    labels = clean.clone()
    labels[:, :prompt] = IGNORE_INDEX
    labels[noisy != MASK_ID] = IGNORE_INDEX
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return ce.sum() / (labels != IGNORE_INDEX).sum()


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("family", ["llada2", "sdar"])
def test_loss_and_gradients_equal_dfactory_restatement(family: str) -> None:
    model = d1.load_model(FIXTURES / f"{family}_tiny", dtype="float32")
    block, n, prompt = getattr(model.config, "block_size", 4), 16, 5  # SDAR: its own blocks of 4
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 90, (2, n), generator=generator)
    noisy, masked, _ = noise_blocks(clean, torch.tensor([prompt, prompt]), MASK_ID, generator=generator)
    labels = torch.where(masked, clean, IGNORE_INDEX)
    assert masked.sum() > 4
    ours, _ = block_sft_loss(model, noisy, clean, labels, block)
    reference = dfactory_loss(model, noisy, clean, prompt, block)
    assert abs(ours.item() - reference.item()) < 1e-6
    ours_grads, reference_grads = gradients(model, ours), gradients(model, reference)
    assert len(ours_grads) == len(reference_grads) > 0
    worst = max((a - b).abs().max().item() for a, b in zip(ours_grads, reference_grads, strict=True))
    largest = max(b.abs().max().item() for b in reference_grads)
    assert worst <= 1e-6 * max(largest, 1.0)  # measured: 9.5e-7 of gradients up to 5.4 (LLaDA 2.x), 0 (SDAR)


@pytest.mark.parametrize("family", ["llada2", "sdar"])
def test_an_earlier_block_never_sees_a_later_one(family: str) -> None:
    """Changing the last block (noisy and clean) changes that block's logits and leaves every earlier
    noisy block unchanged, so no clean block attends a later one in any layer."""
    model = d1.load_model(FIXTURES / f"{family}_tiny", dtype="float32").eval()
    block, n = 4, 16
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 90, (1, n), generator=generator)
    noisy, _, _ = noise_blocks(clean, torch.tensor([2]), MASK_ID, (0.5, 0.5), generator=generator)
    with torch.no_grad():
        before, _ = block_logits(model, noisy, clean, block)
        changed_clean, changed_noisy = clean.clone(), noisy.clone()
        changed_clean[:, -3:] = (clean[:, -3:] + 1) % 90
        changed_noisy[:, -3:] = (noisy[:, -3:] + 1) % 90
        after, _ = block_logits(model, changed_noisy, changed_clean, block)
    assert (before[:, : n - block] - after[:, : n - block]).abs().max() < 1e-5  # MoE batches: rounding only
    assert (before[:, n - block :] - after[:, n - block :]).abs().max() > 1e-3


def test_padded_rows_give_the_logits_they_give_alone() -> None:
    """Left padding (and hidden right padding) with an attention mask: the grid starts at the first real token."""
    model = d1.load_model(FIXTURES / "llada2_tiny", dtype="float32").eval()
    generator = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 90, (1, 12), generator=generator)
    noisy, _, _ = noise_blocks(clean, torch.tensor([3]), MASK_ID, (0.5, 0.5), generator=generator)
    pad = torch.full((1, 5), 94)
    left = torch.cat([torch.zeros(1, 5), torch.ones(1, 12)], dim=1).long()
    with torch.no_grad():
        alone, _ = block_logits(model, noisy, clean, 4)
        left_padded, _ = block_logits(model, torch.cat([pad, noisy], 1), torch.cat([pad, clean], 1), 4, left)
        right_padded, _ = block_logits(model, torch.cat([noisy, pad], 1), torch.cat([clean, pad], 1), 4, left.flip(1))
    torch.testing.assert_close(left_padded[:, 5:], alone, rtol=1e-5, atol=5e-5)  # float32 rounding of logits ~20
    torch.testing.assert_close(right_padded[:, :12], alone, rtol=1e-5, atol=5e-5)
