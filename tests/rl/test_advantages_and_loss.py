"""Group advantages, reward aggregation and the diffu-GRPO loss on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from d1.diffusion.losses import grpo_loss
from d1.rl.advantages import combine_rewards, group_advantages, learning_rows


def test_group_advantages_and_zero_std_ratio() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, stats = group_advantages(rewards, num_generations=4)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    assert stats["zero_std_ratio"] == 0.5
    assert math.isclose(stats["reward"], 1.25)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert math.isclose(stats["reward_std"], std / 2, rel_tol=1e-6)
    scaled, _ = group_advantages(rewards, num_generations=4, scale_rewards="group")
    assert torch.allclose(scaled[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    assert torch.equal(scaled[4:], torch.zeros(4))
    with pytest.raises(ValueError, match="groups of num_generations=3"):
        group_advantages(rewards, num_generations=3)


def test_negative_advantage_scale_shrinks_only_the_below_mean_completions() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # means 0.25 and 0.75
    adv, stats = group_advantages(rewards, num_generations=4, negative_advantage_scale=0.0)
    assert torch.allclose(adv, torch.tensor([0.75, 0, 0, 0, 0.25, 0.25, 0.25, 0]))
    quarter, _ = group_advantages(rewards, num_generations=4, negative_advantage_scale=0.25)
    assert torch.allclose(quarter, torch.tensor([0.75, -0.0625, -0.0625, -0.0625, 0.25, 0.25, 0.25, -0.1875]))
    assert stats["zero_std_ratio"] == 0.0 and math.isclose(stats["reward"], 0.5)


def test_combine_rewards_skips_none_and_rejects_empty_rows() -> None:
    per_func = torch.tensor([[1.0, math.nan], [0.5, 2.0]])
    assert torch.allclose(combine_rewards(per_func, torch.tensor([1.0, 0.5])), torch.tensor([1.0, 1.5]))
    with pytest.raises(ValueError, match=r"Rows \[1\] got no reward"):
        combine_rewards(torch.tensor([[1.0], [math.nan]]), torch.tensor([1.0]))


def test_grpo_loss_with_clipping_and_kl_by_hand() -> None:
    logps = torch.tensor([[math.log(0.5), math.log(0.2)], [math.log(0.3), math.log(0.9)]])
    old = torch.tensor([[math.log(0.25), math.log(0.2)], [math.log(0.6), math.log(0.9)]])
    ref = torch.tensor([[math.log(0.4), math.log(0.1)], [math.log(0.3), math.log(0.3)]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    eps, beta = 0.2, 0.1
    # ratios: row0 [2.0 -> clipped to 1.2 with A>0, 1.0]; row1 [0.5 -> clipped to 0.8 with A<0, 1.0 (masked)]
    per_token = [[-1.2, -1.0], [-(0.8 * -2.0), -(1.0 * -2.0)]]
    kls = [
        [0.4 / 0.5 - math.log(0.4 / 0.5) - 1, 0.1 / 0.2 - math.log(0.1 / 0.2) - 1],
        [0.0, 0.3 / 0.9 - math.log(0.3 / 0.9) - 1],
    ]
    total = [[per_token[i][j] + beta * kls[i][j] for j in range(2)] for i in range(2)]
    loss, stats = grpo_loss(logps, old, ref, adv, mask, epsilon=eps, beta=beta)
    token_mean = (total[0][0] + total[0][1] + total[1][0]) / 3
    assert math.isclose(loss.item(), token_mean, rel_tol=1e-5)
    assert math.isclose(stats["clip_ratio"].item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(stats["kl"].item(), (kls[0][0] + kls[0][1] + kls[1][0]) / 3, rel_tol=1e-5)
    seq, _ = grpo_loss(logps, old, ref, adv, mask, epsilon=eps, beta=beta, loss_normalization="sequence")
    assert math.isclose(seq.item(), ((total[0][0] + total[0][1]) / 2 + total[1][0]) / 2, rel_tol=1e-5)
    no_kl, stats0 = grpo_loss(logps, old, None, adv, mask, epsilon=eps, beta=0.0)
    assert math.isclose(no_kl.item(), (-1.2 - 1.0 + 1.6) / 3, rel_tol=1e-5) and stats0["kl"].item() == 0


def test_first_iteration_gradient_is_the_advantage_weighted_score() -> None:
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), None, torch.tensor([3.0]), torch.ones(1, 2), beta=0.0)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([[-1.5, -1.5]]))  # -A * d ratio / d logp / n_tokens


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_dropping_zero_advantage_rows_keeps_the_loss_and_gradient(normalization: str) -> None:
    """Without KL, rows with advantage 0 add nothing: the loss over the learning rows, divided by the whole
    batch's count, equals the whole batch's loss, and so do the gradients of the rows kept."""
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(5, 6, generator=g).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(5, 6, generator=g)  # some ratios outside the clip range
    advantages = torch.tensor([0.5, 0.0, -0.25, 0.0, 1.0])
    mask = torch.ones(5, 6)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    full, _ = grpo_loss(logps, old, None, advantages, mask, 0.2, 0.0, normalization)
    (full_grad,) = torch.autograd.grad(full, logps)
    keep = learning_rows(advantages)
    assert keep.tolist() == [0, 2, 4]
    count = mask.sum().item() if normalization == "token" else 5
    part, _ = grpo_loss(
        logps[keep], old[keep], None, advantages[keep], mask[keep], 0.2, 0.0, normalization, count
    )
    (part_grad,) = torch.autograd.grad(part, logps)
    assert torch.allclose(full, part)
    assert torch.allclose(full_grad, part_grad)
    assert learning_rows(torch.zeros(3)).tolist() == [0]  # never empty
