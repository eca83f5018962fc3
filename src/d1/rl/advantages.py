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
    rewards: torch.Tensor, num_generations: int, scale_rewards: Literal["none", "group"] = "none"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward minus its group's mean (d1); `scale_rewards="group"` also divides by the group's std.

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
    stats = {
        "reward": rewards.mean().item(),
        "reward_std": std.mean().item(),
        "zero_std_ratio": (std.flatten() < 1e-6).float().mean().item(),
    }
    return advantages.flatten(), stats
