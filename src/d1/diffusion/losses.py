"""Training objectives of masked diffusion LMs: LLaDA's masked SFT loss and the RL objectives.

The RL objectives (`OBJECTIVES`) are d1's `grpo_clip` (`grpo_loss`), ESPO (`espo_loss`), SPG (`spg_loss`)
and wd1 (`wd1_loss`); `OBJECTIVE_NEEDS` says what each one reads, for the trainer and the config checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, num_completion_tokens: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA/d1's SFT loss: sum over masked tokens of CE / t', over the number of completion tokens.

    `labels` is the clean token where the position was masked and IGNORE_INDEX elsewhere; `t` [B] is each
    row's masking ratio. Returns (loss, unscaled), unscaled = plain mean CE over masked tokens (for logging).
    """
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX
    )
    ce = ce.view_as(labels)
    loss = (ce / t[:, None]).sum() / num_completion_tokens
    unscaled = ce.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
    return loss, unscaled.detach()


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic term -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) and where the clip is taken."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantages
    return -torch.min(unclipped, clipped), unclipped > clipped


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon: float = 0.5,
    beta: float = 0.04,
    loss_normalization: Literal["token", "sequence"] = "token",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """diffu-GRPO's per-token PPO-clip objective with a k3 KL penalty (d1's `compute_loss`).

    Inputs are [B, T] except `advantages` [B]. `token` normalisation averages over all completion tokens of
    the batch (d1's code); `sequence` averages per sequence, then over sequences (the paper's formula).
    `normalizer` replaces the count averaged over (tokens or sequences) when rows that cannot change the loss
    were left out of the batch. Returns (loss, stats) with the mean KL and the clipped fraction over the
    completion tokens given.
    """
    mask = completion_mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    per_token, clipped = _clipped_surrogate(ratio, advantages[:, None], epsilon, epsilon)
    kl = torch.zeros_like(logps)
    if beta != 0.0 and ref_logps is not None:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * kl
    if loss_normalization == "token":
        loss = (per_token * mask).sum() / (normalizer or mask.sum().clamp(min=1))
    elif loss_normalization == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / (normalizer or len(mask))
    else:
        raise ValueError(f"loss_normalization={loss_normalization!r} is unknown; use 'token' or 'sequence'.")
    denom = mask.sum().clamp(min=1)
    stats = {
        "kl": ((kl * mask).sum() / denom).detach(),
        "clip_ratio": ((clipped.to(mask.dtype) * mask).sum() / denom).detach(),
    }
    return loss, stats


def espo_loss(
    seq_logps: torch.Tensor,
    old_seq_logps: torch.Tensor,
    ref_seq_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    length: int,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.01,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ESPO's sequence-level clipped objective on ELBO estimates (Ou et al., arXiv 2512.03759).

    Inputs are [B]: each completion's ELBO estimate under the current, rollout (old) and reference policies.
    With r = exp((ELBO - ELBO_old) / length), the loss is
        sum_i -min(r_i A_i, clip(r_i, 1 - eps_low, 1 + eps_high) A_i) / B
        + beta * sum_i (ELBO_i - ELBO_ref_i)^2 / 2 / (B * length),
    the KL being the k2 estimate (Schulman's) on whole sequences. `length` is the completion width (padding
    included), as ESPO's code divides by `logits_to_keep` (espo/espo_trainer.py compute_loss, L191-201; k2 at
    L97-99); the paper calls it the sequence length. `normalizer` replaces B when rows that cannot change the
    loss were left out. Stats: the KL term before beta, and the share of sequences whose clipped side is taken
    (ESPO's `clip_ratio/region_mean`).

    Published settings (ML-GSAI/ESPO b5f2dac): epsilon 0.2 for both sides (recipes/train.yaml L18; trl's
    `epsilon_high` defaults to `epsilon`), 0 for Countdown (recipes/run_countdown_llada.sh L29); beta 1e-2
    Sudoku and code, 1e-3 GSM8K and MATH, 3e-3 Countdown (recipes/run_*_llada.sh L28-29); mu = 8 inner
    updates, num_mc 2 ELBO samples with the coupled (complementary-mask) estimate, G = 6 (16 MATH, 10 code),
    learning rate 3e-6 (code: train.yaml's 1e-6). Their advantages use a leave-one-out baseline, r_i - the
    mean of the group's other rewards, without std scaling (espo/espo_trainer.py L706-716, train.yaml L19).
    """
    if length < 1:
        raise ValueError(f"length={length} must be the completion width (>= 1).")
    if beta != 0.0 and ref_seq_logps is None:
        raise ValueError(f"beta={beta} needs ref_seq_logps (the reference's ELBOs); pass them or use beta 0.")
    ratio = torch.exp((seq_logps - old_seq_logps) / length)
    per_seq, clipped = _clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high)
    count = normalizer or len(seq_logps)
    loss = per_seq.sum() / count
    kl = torch.zeros((), dtype=seq_logps.dtype, device=seq_logps.device)
    if ref_seq_logps is not None:
        kl = ((seq_logps - ref_seq_logps) ** 2 / 2).sum() / (count * length)
        loss = loss + beta * kl
    stats = {"kl": kl.detach(), "clip_ratio": clipped.to(seq_logps.dtype).mean().detach()}
    return loss, stats


def spg_negative_value(elbo: torch.Tensor, eubo: torch.Tensor, mix_weight: float) -> torch.Tensor:
    """SPG's value for negative-advantage sequences: mix_weight * EUBO + (1 - mix_weight) * ELBO.

    mix_weight 1 is SPG's `eubo`, 0 its `elbo`, 0.5 its published `mix` (spg/spg_trainer.py L545-548).
    """
    if not 0.0 <= mix_weight <= 1.0:
        raise ValueError(f"mix_weight={mix_weight} must lie in [0, 1] (1 = EUBO only, 0 = ELBO only).")
    return mix_weight * eubo + (1 - mix_weight) * elbo


def spg_loss(
    pos_seq: torch.Tensor,
    neg_seq: torch.Tensor,
    advantages: torch.Tensor,
    lengths: torch.Tensor,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPG's sandwiched policy gradient (Wang et al., arXiv 2510.09541): no ratio, no old policy, no KL.

    Inputs are [B]. A sequence with advantage > 0 is pushed up through a lower bound of its log-likelihood,
    `pos_seq` (the ELBO); any other through an upper bound, `neg_seq` (the EUBO or `spg_negative_value`'s
    mixture), so that each step ascends a bound on the true objective. The loss is
        sum_i -A_i * v_i * lengths_i / sum_i lengths_i,   v_i = pos_seq_i if A_i > 0 else neg_seq_i,
    with `lengths` the completion lengths (tokens up to the first EOS). SPG's values are per-token averages
    (the masked tokens' log-probs over their count, spg/spg_trainer.py _get_per_seq_logps L532-556), so the
    length weighting turns them back into sequence sums; the loss is spg/spg_trainer.py compute_loss
    L115-118, and SPG raises for beta != 0 (L123-124). `normalizer` replaces sum(lengths) when rows that
    cannot change the loss were left out. No ratio and no KL, so no stats.

    Published settings (facebookresearch/SPG a1c7120, spg/slurm_scripts/spg_mix/*.sbatch L40-52 and
    spg_eubo/*.sbatch): beta 0, mu = 4, G = 6, forward_type block_random with block_length 32 (train.yaml
    L62), num_t 2, min_t 0, max_t 1; `mix` with mix_weight 0.5 and eubo_beta 1.0 Sudoku, 1.5 GSM8K, MATH and
    Countdown; `eubo` with eubo_beta 1.0 Sudoku, 1.5 GSM8K and MATH, 2.0 Countdown; sampling temperature 0.3
    for Sudoku, the default 0.9 otherwise; learning rate 3e-6. Advantages are reward - group mean without std
    scaling, and the lower bound is used where that is > 0 (spg/spg_trainer.py L717-721).
    """
    value = torch.where(advantages > 0, pos_seq, neg_seq)
    weights = lengths.to(value.dtype)
    loss = -(advantages * value * weights).sum() / (normalizer or weights.sum().clamp(min=1))
    return loss, {}


def wd1_loss(
    seq_logps: torch.Tensor, advantages: torch.Tensor, num_generations: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """wd1's weighted log-likelihood (Tang et al., 2025; xiaohangt/wd1): no ratio, so no old or reference pass.

    `seq_logps` [B] is each completion's log-likelihood, the SUM of its per-token log-probs over the
    completion (their code sums d1's one-step estimate under the completion mask); rows come in groups of
    `num_generations`. Within a group, w+ = softmax(A) and w- = softmax(-A); the loss is
        mean over groups of sum_i (w-_i - w+_i) * seq_logps_i,
    raising the likelihood of the better completions and lowering that of the worse ones (xiaohangt/wd1
    08989851, wd1/trainers/rev_grpo_trainer.py compute_loss L144-160, trainer_type wll_d1_neg). Their code
    takes the softmax over the per-device micro-batch, which in their configs is exactly one group
    (per_device_train_batch_size = num_generations = 6, wd1/train.yaml L37, L43); here it is per group. Their
    advantages are reward - group mean, without std scaling (L628-638); shifting a group's advantages by a
    constant leaves the loss unchanged. No ratio and no KL, so no stats.

    Published settings (run/wll_NP_*.sh, wd1/train.yaml): mu = 8 inner updates Sudoku, 12 GSM8K, MATH and
    Countdown; G = 6; learning rate 3e-6; completions of 256 tokens, block 32, 128 steps; beta 0.04 and
    epsilon 0.5 are in the config but unused by this objective.
    """
    if num_generations < 1 or len(seq_logps) % num_generations:
        raise ValueError(
            f"wd1 needs whole groups: {len(seq_logps)} rows are not groups of "
            f"num_generations={num_generations}."
        )
    logps = seq_logps.view(-1, num_generations)
    adv = advantages.view(-1, num_generations)
    weights = torch.softmax(-adv, dim=-1) - torch.softmax(adv, dim=-1)
    loss = (weights * logps).sum(-1).mean()
    return loss, {}


OBJECTIVES = ("grpo_clip", "espo", "spg", "wd1")


@dataclass(frozen=True)
class ObjectiveNeeds:
    """What an RL objective reads: which log-prob passes the trainer makes and which options apply."""

    sequence_level: bool  # log-probs per sequence [B] rather than per token [B, T]
    needs_old_logps: bool  # a ratio to the rollout policy: an old log-prob pass when mu > 1
    uses_epsilon: bool  # a clip range
    uses_beta: bool  # a KL penalty to the reference policy (beta > 0 allowed)
    needs_upper_bound: bool  # an upper bound (EUBO) of the log-likelihood for negative-advantage rows
    row_separable: bool  # a sum over rows: with beta 0, rows of advantage 0 may go (keeping the normaliser)
    reference_estimator: str  # the log-likelihood estimate the reference code uses


OBJECTIVE_NEEDS: dict[str, ObjectiveNeeds] = {
    "grpo_clip": ObjectiveNeeds(
        sequence_level=False, needs_old_logps=True, uses_epsilon=True, uses_beta=True,
        needs_upper_bound=False, row_separable=True, reference_estimator="one_step",
    ),
    "espo": ObjectiveNeeds(
        sequence_level=True, needs_old_logps=True, uses_epsilon=True, uses_beta=True,
        needs_upper_bound=False, row_separable=True, reference_estimator="mc_elbo",
    ),
    "spg": ObjectiveNeeds(
        sequence_level=True, needs_old_logps=False, uses_epsilon=False, uses_beta=False,
        needs_upper_bound=True, row_separable=True, reference_estimator="mc_elbo",
    ),
    "wd1": ObjectiveNeeds(
        sequence_level=True, needs_old_logps=False, uses_epsilon=False, uses_beta=False,
        needs_upper_bound=False, row_separable=False, reference_estimator="one_step",
    ),
}
