"""Per-token log-likelihood estimates of a completion under a masked diffusion model.

d1's `one_step` estimate scores a completion with a single forward pass: the completion fully masked, each
prompt token masked with probability `p_mask_prompt` (a cheap, randomised estimate of log pi(o_k | q)).
`coupled` (DiffuCoder's coupled sampling) masks a random fraction t of the completion and, in the same
batched call, the complement; each token is scored once, with part of the completion visible, so the
objective also trains the conditionals that iterative decoding uses.
`elbo_loglikelihood` is LLaDA's evaluation likelihood: a Monte-Carlo estimate of the masked-diffusion ELBO of
a continuation (random masking ratio, masked tokens' log-probs reweighted by 1/ratio).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.logits import predicting_logits
from d1.diffusion.masking import _uniform, mask_prompt
from d1.diffusion.sampling import resolve_token_id

ESTIMATORS = ("one_step", "coupled")


def per_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    estimator: Literal["one_step", "coupled"] = "one_step",
) -> torch.Tensor:
    """Float32 log-probabilities [B, completion_length] of the last `completion_length` tokens of `input_ids`
    given the masked input (`one_step`: d1's `_get_per_token_logps`; `coupled`: see the module docstring);
    differentiable. `attention_mask` [B, L] marks padding. Every draw comes from `generator`."""
    b, length = input_ids.shape
    if not 0 < completion_length <= length:
        raise ValueError(f"completion_length={completion_length} must be in [1, {length}] (input length).")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}."
        )
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; use 'one_step' (d1) or 'coupled'.")
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    noisy = mask_prompt(input_ids, completion_length, mask_id, p_mask_prompt, generator, attention_mask)
    targets = input_ids[:, -completion_length:]
    if estimator == "one_step":
        return -_nll(_completion_logits(model, noisy, attention_mask, completion_length), targets)
    t = _uniform((b, 1), input_ids, generator)
    chosen = _uniform((b, completion_length), input_ids, generator) < t
    halves = [noisy.clone(), noisy.clone()]
    halves[0][:, -completion_length:] = torch.where(chosen, mask_id, targets)
    halves[1][:, -completion_length:] = torch.where(chosen, targets, mask_id)
    both_mask = None if attention_mask is None else attention_mask.repeat(2, 1)
    logits = _completion_logits(model, torch.cat(halves), both_mask, completion_length)
    nll = _nll(logits, targets.repeat(2, 1))
    return -torch.where(chosen, nll[:b], nll[b:])


def _completion_logits(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None, completion_length: int
) -> torch.Tensor:
    """Logits [B, completion_length, V] predicting the last `completion_length` columns (realigned for a
    shifted model); only those are computed when the model takes `logits_to_keep`."""
    return predicting_logits(model, ids, completion_length, attention_mask)[0]


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float32 per-token cross-entropy [B, T] of `targets` under `logits` [B, T, V]."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return nll.view_as(targets)


def elbo_loglikelihood(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    mask_token_id: int | None = None,
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo estimate of the masked-diffusion ELBO of `target_ids` [T] given `prompt_ids` [P], the
    lower bound on log p(target | prompt) that LLaDA's evaluation reports as the log-likelihood:

        ELBO = E_{l ~ U{1..T}} E_{S ⊂ target, |S| = l} [ (T / l) * sum_{i in S} log p(x_i | prompt, target with S
        masked) ].

    `mc_num` samples (l_j, S_j), `batch_size` rows per forward pass: l_j is stratified, floor((j + u) T /
    mc_num) + 1 for one u ~ U[0, 1) (averaged over j this is exactly uniform on {1..T}, so the estimate is
    unbiased; every l occurs equally often when T divides mc_num), and S_j is a uniform subset of size l_j.
    Its standard error is the spread of the per-sample terms over sqrt(mc_num) (at most that of independent
    samples). `cfg_scale` > 0 uses classifier-free guidance as the sampler does (the prompt masked in the
    unconditional pass), no longer a bound then. Cost: ceil(mc_num / batch_size) forward passes of P + T
    tokens (twice the rows with guidance). Every draw comes from `generator`.
    """
    length = target_ids.numel()
    if length < 1 or prompt_ids.numel() < 1:
        raise ValueError(f"prompt ({prompt_ids.numel()} tokens) and target ({length}) must be non-empty.")
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"mc_num={mc_num} and batch_size={batch_size} must be at least 1.")
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    sequence = torch.cat([prompt_ids, target_ids])
    u = float(_uniform((), sequence, generator))
    counts = ((torch.arange(mc_num, dtype=torch.float64) + u) * length / mc_num).floor().long() + 1
    total = 0.0
    for start in range(0, mc_num, batch_size):
        chunk = counts[start : start + batch_size].to(sequence.device)
        scores = _uniform((len(chunk), length), sequence, generator)
        ranks = scores.argsort(dim=1).argsort(dim=1)  # a uniform random order of the target positions
        masked = ranks < chunk[:, None]
        noisy = sequence.repeat(len(chunk), 1)
        noisy[:, prompt_ids.numel() :] = torch.where(masked, mask_id, target_ids)
        logits = _guided_target_logits(model, noisy, prompt_ids.numel(), mask_id, cfg_scale)
        nll = _nll(logits, target_ids.repeat(len(chunk), 1))
        weight = length / chunk.to(torch.float64)
        total += float(((nll.double() * masked).sum(dim=1) * weight).sum())
    return -total / mc_num


def _guided_target_logits(
    model: nn.Module, noisy: torch.Tensor, prompt_length: int, mask_id: int, cfg_scale: float
) -> torch.Tensor:
    """Logits of the target columns; with `cfg_scale` > 0, un + (s + 1) * (cond - un), the unconditional
    pass seeing the prompt masked (the sampler's guidance)."""
    target_length = noisy.shape[1] - prompt_length
    if cfg_scale <= 0:
        return _completion_logits(model, noisy, None, target_length)
    unconditional = noisy.clone()
    unconditional[:, :prompt_length] = mask_id
    logits, un_logits = _completion_logits(model, torch.cat([noisy, unconditional]), None, target_length).chunk(2)
    return un_logits + (cfg_scale + 1) * (logits - un_logits)
