"""The RL objectives ESPO, SPG and wd1: loss and gradient against hand computations, and their invariants."""

from __future__ import annotations

import math

import pytest
import torch

from d1.diffusion.losses import (
    OBJECTIVE_NEEDS,
    OBJECTIVES,
    espo_loss,
    spg_loss,
    spg_negative_value,
    wd1_loss,
)

L = 4  # completion width of the ESPO cases
OLD = [-10.0, -12.0, -8.0, -20.0, -15.0, -9.0]
REF = [-11.0, -12.5, -9.0, -18.0, -15.0, -10.0]
# Two groups of three; per row the target ratio r = exp((ELBO - ELBO_old) / L) and the advantage.
RATIOS = [1.5, 1.5, 0.5, 0.5, 1.1, 0.9]
ESPO_ADV = [1.0, -0.5, -0.5, 2.0, -1.0, -1.0]
# With eps_low 0.2, eps_high 0.28, -min(r A, clip(r) A) per row, by hand:
#   r 1.5, A>0: clipped to 1.28 -> -1.28      r 1.5, A<0: -1.5 * -0.5 < -1.28 * -0.5 -> 0.75 (unclipped)
#   r 0.5, A<0: clipped to 0.8 -> 0.4         r 0.5, A>0: 0.5 * 2 < 0.8 * 2 -> -1.0 (unclipped)
#   r 1.1 and 0.9 lie inside the range -> 1.1, 0.9
ESPO_TERMS = [-1.28, 0.75, 0.4, -1.0, 1.1, 0.9]
# d/dELBO of -r A is -A r / L where unclipped, 0 where clipped.
ESPO_TERM_GRADS = [0.0, 0.5 * 1.5 / L, 0.0, -2.0 * 0.5 / L, 1.1 / L, 0.9 / L]


def _espo_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    current = [old + L * math.log(r) for old, r in zip(OLD, RATIOS, strict=True)]
    seq = torch.tensor(current, dtype=torch.float64, requires_grad=True)
    as64 = [torch.tensor(v, dtype=torch.float64) for v in (OLD, REF, ESPO_ADV)]
    return seq, as64[0], as64[1], as64[2]


def test_espo_loss_and_gradient_with_clipping_and_kl_by_hand() -> None:
    seq, old, ref, adv = _espo_inputs()
    beta, batch = 0.05, 6
    current = seq.tolist()
    kl = sum((c - r) ** 2 / 2 for c, r in zip(current, REF, strict=True)) / (batch * L)
    loss, stats = espo_loss(seq, old, ref, adv, L, epsilon_low=0.2, epsilon_high=0.28, beta=beta)
    loss.backward()
    assert math.isclose(loss.item(), sum(ESPO_TERMS) / batch + beta * kl, rel_tol=1e-9)
    rows = zip(ESPO_TERM_GRADS, current, REF, strict=True)
    grads = [g / batch + beta * (c - r) / (batch * L) for g, c, r in rows]
    assert seq.grad.tolist() == pytest.approx(grads, rel=1e-9, abs=1e-12)
    assert math.isclose(stats["kl"].item(), kl, rel_tol=1e-9)
    assert math.isclose(stats["clip_ratio"].item(), 2 / 6)


def test_espo_without_kl_and_the_missing_reference() -> None:
    seq, old, ref, adv = _espo_inputs()
    loss, stats = espo_loss(seq, old, None, adv, L, epsilon_low=0.2, epsilon_high=0.28, beta=0.0)
    loss.backward()
    assert math.isclose(loss.item(), sum(ESPO_TERMS) / 6, rel_tol=1e-9)
    assert seq.grad.tolist() == pytest.approx([g / 6 for g in ESPO_TERM_GRADS], rel=1e-9, abs=1e-12)
    assert stats["kl"].item() == 0.0
    with pytest.raises(ValueError, match="beta=0.05 needs ref_seq_logps"):
        espo_loss(seq, old, None, adv, L, beta=0.05)


def test_espo_on_policy_is_minus_the_mean_advantage_and_zero_rows_can_leave() -> None:
    seq = torch.tensor(OLD, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(ESPO_ADV, dtype=torch.float64)
    loss, stats = espo_loss(seq, seq.detach(), None, adv, L, beta=0.0)
    loss.backward()
    assert math.isclose(loss.item(), -sum(ESPO_ADV) / 6, abs_tol=1e-12)
    assert seq.grad.tolist() == pytest.approx([-a / (6 * L) for a in ESPO_ADV])
    assert stats["clip_ratio"].item() == 0.0
    # A row with advantage 0 leaves the loss unchanged when the normaliser keeps the whole batch's count.
    full_seq, old, ref, full_adv = _espo_inputs()
    full_adv = full_adv.clone()
    full_adv[4] = 0.0
    keep = [0, 1, 2, 3, 5]
    full, _ = espo_loss(full_seq, old, ref, full_adv, L, beta=0.0)
    part, _ = espo_loss(full_seq[keep], old[keep], ref[keep], full_adv[keep], L, beta=0.0, normalizer=6)
    assert math.isclose(full.item(), part.item(), rel_tol=1e-12)


SPG_ADV = [0.5, -0.5, 0.0, 1.0, -0.25, -0.75]
LENGTHS = [4, 2, 3, 5, 1, 6]
ELBO = [-1.2, -0.8, -2.0, -0.5, -1.5, -0.9]
EUBO = [-1.0, -0.6, -1.7, -0.4, -1.1, -0.7]


@pytest.mark.parametrize("mix_weight", [0.5, 1.0])
def test_spg_loss_and_gradient_by_hand(mix_weight: float) -> None:
    elbo = torch.tensor(ELBO, dtype=torch.float64, requires_grad=True)
    eubo = torch.tensor(EUBO, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(SPG_ADV, dtype=torch.float64)
    neg = spg_negative_value(elbo, eubo, mix_weight)
    loss, stats = spg_loss(elbo, neg, adv, torch.tensor(LENGTHS))
    loss.backward()
    total = sum(LENGTHS)
    expected, elbo_grads, eubo_grads = 0.0, [], []
    for a, n, lo, up in zip(SPG_ADV, LENGTHS, ELBO, EUBO, strict=True):
        if a > 0:  # the lower bound for positive advantages
            expected += -a * lo * n / total
            elbo_grads.append(-a * n / total)
            eubo_grads.append(0.0)
        else:  # the upper bound (mixed with the lower one) otherwise
            expected += -a * (mix_weight * up + (1 - mix_weight) * lo) * n / total
            elbo_grads.append(-a * n * (1 - mix_weight) / total)
            eubo_grads.append(-a * n * mix_weight / total)
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert elbo.grad.tolist() == pytest.approx(elbo_grads, abs=1e-12)
    assert eubo.grad.tolist() == pytest.approx(eubo_grads, abs=1e-12)
    assert stats == {}


def test_spg_positive_advantages_ignore_the_upper_bound_and_zero_rows_can_leave() -> None:
    elbo = torch.tensor(ELBO, dtype=torch.float64)
    neg = torch.tensor(EUBO, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([abs(a) + 0.1 for a in SPG_ADV], dtype=torch.float64)
    lengths = torch.tensor(LENGTHS)
    loss, _ = spg_loss(elbo, neg, adv, lengths)
    loss.backward()
    other, _ = spg_loss(elbo, neg.detach() * 7 - 3, adv, lengths)
    assert loss.item() == other.item()
    assert neg.grad.tolist() == [0.0] * 6
    signed = torch.tensor(SPG_ADV, dtype=torch.float64)
    keep = [0, 1, 3, 4, 5]  # row 2 has advantage 0
    full, _ = spg_loss(elbo, neg.detach(), signed, lengths)
    part, _ = spg_loss(elbo[keep], neg.detach()[keep], signed[keep], lengths[keep], normalizer=sum(LENGTHS))
    assert math.isclose(full.item(), part.item(), rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"mix_weight=1.5 must lie in \[0, 1\]"):
        spg_negative_value(elbo, neg, 1.5)


WD1_ADV = [1.0, -0.5, -0.5, 0.4, 0.2, -0.6]
WD1_LOGPS = [-10.0, -12.0, -8.0, -20.0, -15.0, -9.0]


def _wd1_weights(advantages: list[float]) -> list[float]:
    """w-_i - w+_i of one group, from exponentials written out."""
    pos = [math.exp(a) for a in advantages]
    neg = [math.exp(-a) for a in advantages]
    return [n / sum(neg) - p / sum(pos) for p, n in zip(pos, neg, strict=True)]


def test_wd1_loss_and_gradient_by_hand() -> None:
    seq = torch.tensor(WD1_LOGPS, dtype=torch.float64, requires_grad=True)
    loss, stats = wd1_loss(seq, torch.tensor(WD1_ADV, dtype=torch.float64), num_generations=3)
    loss.backward()
    weights = _wd1_weights(WD1_ADV[:3]) + _wd1_weights(WD1_ADV[3:])
    expected = sum(w * s for w, s in zip(weights, WD1_LOGPS, strict=True)) / 2  # the mean over the two groups
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert seq.grad.tolist() == pytest.approx([w / 2 for w in weights], abs=1e-12)
    assert weights[0] < 0 < weights[1]  # the best completion is pushed up, the worse ones down
    assert stats == {}


def test_wd1_is_per_group_and_not_separable_by_row() -> None:
    seq = torch.tensor(WD1_LOGPS, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(WD1_ADV, dtype=torch.float64)
    loss, _ = wd1_loss(seq, adv, num_generations=3)
    shifted = adv + torch.tensor([3.0] * 3 + [-2.0] * 3, dtype=torch.float64)  # each group's rewards shifted
    same, _ = wd1_loss(seq, shifted, num_generations=3)
    assert math.isclose(loss.item(), same.item(), rel_tol=1e-12)
    # A group whose completions all got the same reward carries no signal.
    flat = adv.clone()
    flat[3:] = 0.25
    flat_loss, _ = wd1_loss(seq, flat, num_generations=3)
    flat_loss.backward()
    assert seq.grad[3:].tolist() == [0.0] * 3
    # A row of advantage 0 in a group with signal still gets a weight: rows cannot be dropped one by one.
    seq.grad = None
    zero_row = torch.tensor([0.75, 0.0, -0.25, -0.5, 0.0, 0.0], dtype=torch.float64)  # one group of six
    wd1_loss(seq, zero_row, num_generations=6)[0].backward()
    assert seq.grad[1].item() != 0.0 and not OBJECTIVE_NEEDS["wd1"].row_separable
    with pytest.raises(ValueError, match="6 rows are not groups of num_generations=4"):
        wd1_loss(seq, adv, num_generations=4)


def test_objective_needs_cover_every_objective() -> None:
    assert tuple(OBJECTIVE_NEEDS) == OBJECTIVES == ("grpo_clip", "espo", "spg", "wd1")
    ratio_free = [name for name, needs in OBJECTIVE_NEEDS.items() if not needs.needs_old_logps]
    assert ratio_free == ["spg", "wd1"]
    assert [name for name, needs in OBJECTIVE_NEEDS.items() if needs.needs_upper_bound] == ["spg"]
    assert not OBJECTIVE_NEEDS["grpo_clip"].sequence_level and OBJECTIVE_NEEDS["espo"].sequence_level
