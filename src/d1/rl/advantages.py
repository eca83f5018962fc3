"""Group-relative advantages and reward aggregation for diffu-GRPO (pure tensor functions)."""

from __future__ import annotations

from typing import Literal

import torch


def combine_rewards(per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions [N, F] -> [N]; NaN (a function that returned None) is skipped per
    row, as d1/TRL do. A row where every function returned None is an error."""
    empty = torch.isnan(per_func).all(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"Rows {rows[:10]} got no reward at all (every reward function returned None).")
    return (per_func * weights[None, :]).nansum(dim=1)


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    scale_rewards: Literal["none", "group"] = "none",
    negative_advantage_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward minus its group's mean (d1); `scale_rewards="group"` also divides by the group's std.

    `negative_advantage_scale` multiplies the advantages below 0 (1 = d1; 0 learns only from completions
    better than their group: pushing down a likelihood *estimate* need not push down the likelihood).

    `rewards` [N] holds consecutive groups of `num_generations` completions of the same prompt. Returns the
    advantages [N] and stats: mean reward, mean within-group std, and the fraction of groups whose rewards
    are all equal (zero std: such a group carries no learning signal).
    """
    if rewards.numel() % num_generations:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}."
        )
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean)
    advantages = grouped - mean
    if scale_rewards == "group":
        advantages = advantages / (std + 1e-4)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r} is unknown; use 'none' (d1) or 'group'.")
    advantages = torch.where(advantages < 0, advantages * negative_advantage_scale, advantages)
    stats = {
        "reward": rewards.mean().item(),
        "reward_std": std.mean().item(),
        "zero_std_ratio": (std.flatten() < 1e-6).float().mean().item(),
    }
    return advantages.flatten(), stats


def learning_rows(advantages: torch.Tensor) -> torch.Tensor:
    """Indices of the rows whose advantage is not 0: without a KL term the others add nothing to the loss or
    its gradient, so their log-probs need not be computed. Never empty (row 0 stays), so that every process
    still runs a forward and backward pass, as distributed training needs."""
    rows = advantages.nonzero().flatten()
    return rows if len(rows) else torch.zeros(1, dtype=torch.long, device=advantages.device)
