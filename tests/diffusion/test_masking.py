"""The forward (noising) processes: SFT's completion masking and d1's prompt masking."""

from __future__ import annotations

import torch

from d1.diffusion.masking import SFT_EPS, mask_prompt, noise_completion

MASK = 99


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_noise_completion_masks_only_completion_at_rate_t():
    x = ids(8, 300)
    prompt_lengths = torch.tensor([0, 10, 50, 100, 150, 200, 250, 299])
    t = torch.full((8,), 0.3)
    noisy, masked, t_used = noise_completion(
        x, prompt_lengths, MASK, t=t, generator=torch.Generator().manual_seed(0)
    )
    is_prompt = torch.arange(300)[None, :] < prompt_lengths[:, None]
    assert not masked[is_prompt].any()
    assert torch.equal(noisy, torch.where(masked, MASK, x))
    torch.testing.assert_close(t_used, (1 - SFT_EPS) * t + SFT_EPS)
    rate = masked[~is_prompt].float().mean().item()
    assert abs(rate - t_used[0].item()) < 0.03


def test_noise_completion_is_deterministic_with_a_generator():
    x, prompt_lengths = ids(4, 64), torch.tensor([5, 10, 20, 30])

    def run(seed: int):
        return noise_completion(x, prompt_lengths, MASK, generator=torch.Generator().manual_seed(seed))

    (a, ma, ta), (b, mb, tb), (c, _, tc) = run(3), run(3), run(4)
    assert torch.equal(a, b) and torch.equal(ma, mb) and torch.equal(ta, tb)
    assert not torch.equal(a, c) and not torch.equal(ta, tc)
    assert ((ta >= SFT_EPS) & (ta <= 1)).all()


def test_mask_prompt_masks_completion_fully_and_prompt_at_rate_p():
    x = ids(16, 264, seed=1)
    noisy = mask_prompt(x, 64, MASK, 0.25, generator=torch.Generator().manual_seed(0))
    assert (noisy[:, -64:] == MASK).all()
    prompt_masked = noisy[:, :-64] == MASK
    assert abs(prompt_masked.float().mean().item() - 0.25) < 0.02
    assert torch.equal(noisy[:, :-64][~prompt_masked], x[:, :-64][~prompt_masked])
    assert torch.equal(mask_prompt(x, 64, MASK, 0.0)[:, :-64], x[:, :-64])


def test_mask_prompt_leaves_padding_alone_and_is_deterministic():
    x = ids(4, 40, seed=2)
    attention_mask = torch.ones(4, 40, dtype=torch.long)
    attention_mask[:, :10] = 0
    noisy = mask_prompt(
        x, 8, MASK, 1.0, generator=torch.Generator().manual_seed(0), attention_mask=attention_mask
    )
    assert torch.equal(noisy[:, :10], x[:, :10])
    assert (noisy[:, 10:] == MASK).all()

    def run(seed: int) -> torch.Tensor:
        return mask_prompt(
            x, 8, MASK, 0.5, generator=torch.Generator().manual_seed(seed), attention_mask=attention_mask
        )

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
