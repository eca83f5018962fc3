"""Per-token log-likelihood estimates of a completion under a masked diffusion model.

d1's `one_step` estimate scores a completion with a single forward pass: the completion fully masked, each
prompt token masked with probability `p_mask_prompt` (a cheap, randomised estimate of log pi(o_k | q)).
`coupled` (DiffuCoder's coupled sampling) masks a random fraction t of the completion and, in the same
batched call, the complement; each token is scored once, with part of the completion visible, so the
objective also trains the conditionals that iterative decoding uses.
`mc_elbo` is the masked-diffusion ELBO of the completion estimated with k Monte-Carlo masks in one batched
call (ESPO, SPG; `MCOptions`, `elbo_terms`), optionally block-wise (the semi-autoregressive sampler's bound).
`left_to_right` is JustGRPO's exact likelihood of a left-to-right decode (T passes, batched as rows).
`block_elbo` and `trajectory` are for block-diffusion models (LLaDA 2.x, SDAR: block-causal attention on a grid of
`block_length` from each row's first token): the block-wise ELBO from one forward over the clean sequence and a
noisy copy of the completion (EBPO), and the likelihood of the recorded decoding order (TraceRL).
`elbo_loglikelihood` is LLaDA's evaluation likelihood: a Monte-Carlo estimate of the masked-diffusion ELBO of
a continuation (random masking ratio, masked tokens' log-probs reweighted by 1/ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from d1.diffusion.block_losses import stream_mask
from d1.diffusion.logits import logits_are_shifted, predicting_logits
from d1.diffusion.masking import _uniform, mask_prompt
from d1.diffusion.sampling import resolve_token_id

FULL_ATTENTION_ESTIMATORS = ("one_step", "coupled", "mc_elbo", "left_to_right")
BLOCK_ESTIMATORS = ("block_elbo", "trajectory")
ESTIMATORS = FULL_ATTENTION_ESTIMATORS + BLOCK_ESTIMATORS
T_SAMPLINGS = ("random", "stratified")


@dataclass(frozen=True)
class MCOptions:
    """Settings of the `mc_elbo` estimate (config fields mc_samples, mc_block_length, mc_t_sampling,
    mc_antithetic). `samples`: k masks per sequence (ESPO and SPG use 2). `block_length`: 0 scores the whole
    completion as one block; > 0 estimates the block-wise ELBO of the semi-autoregressive sampler.
    `t_sampling`: "random" draws each mask count independently; "stratified" takes the k counts at evenly
    spaced points shifted by one random offset (unbiased, lower variance). `antithetic`: also score each
    sample under the complementary mask of its block (ESPO's `reduce_var`), averaging the two."""

    samples: int = 2
    block_length: int = 0
    t_sampling: str = "random"
    antithetic: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"mc_samples={self.samples} must be >= 1 (ESPO and SPG use 2).")
        if self.block_length < 0:
            raise ValueError(
                f"mc_block_length={self.block_length} must be >= 0 (0: the whole completion is one block)."
            )
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"mc_t_sampling={self.t_sampling!r} is unknown; use 'random' or 'stratified'.")


def per_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    estimator: Literal["one_step", "coupled", "mc_elbo", "left_to_right", "block_elbo", "trajectory"] = "one_step",
    mc: MCOptions | None = None,
    temperature: float = 1.0,
    chunk_rows: int = 64,
    block_length: int = 0,
    steps: torch.Tensor | None = None,
    shrinkage: int = 1,
) -> torch.Tensor:
    """Float32 log-probabilities [B, completion_length] of the last `completion_length` tokens of `input_ids`
    given the masked input (`one_step`: d1's `_get_per_token_logps`; `coupled`: see the module docstring);
    differentiable. `attention_mask` [B, L] marks padding. Every draw comes from `generator`.

    `mc_elbo` (options `mc`, default `MCOptions()`): per-token ELBO contributions whose sum over the completion
    is the ELBO estimate of log p(completion | prompt) (`elbo_terms(...).elbo()`). `left_to_right`: token k's
    log-prob with the completion's tokens < k visible and >= k masked, under softmax(logits / `temperature`);
    `chunk_rows` rows per forward pass. `block_elbo` (block-diffusion models, `block_length` their grid; `mc`'s
    samples and antithetic): see `block_elbo_terms`. `trajectory`: see `trajectory_logps` (`steps`, `shrinkage`)."""
    _check_inputs(input_ids, completion_length, attention_mask)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; use one of {list(ESTIMATORS)}.")
    if estimator == "block_elbo":
        return block_elbo_terms(
            model, input_ids, completion_length=completion_length, block_length=block_length, mc=mc,
            mask_token_id=mask_token_id, generator=generator, attention_mask=attention_mask,
        ).elbo()  # fmt: skip
    if estimator == "trajectory":
        if steps is None:
            raise ValueError("estimator='trajectory' needs `steps`, the sampler step that committed each token.")
        return trajectory_logps(
            model, input_ids, steps, completion_length=completion_length, block_length=block_length,
            shrinkage=shrinkage, mask_token_id=mask_token_id, attention_mask=attention_mask, chunk_rows=chunk_rows,
        )  # fmt: skip
    if estimator == "mc_elbo":
        return elbo_terms(
            model,
            input_ids,
            completion_length=completion_length,
            mc=mc or MCOptions(),
            mask_token_id=mask_token_id,
            p_mask_prompt=p_mask_prompt,
            generator=generator,
            attention_mask=attention_mask,
        ).elbo()
    if estimator == "left_to_right":
        return left_to_right_logps(
            model,
            input_ids,
            completion_length=completion_length,
            mask_token_id=mask_token_id,
            attention_mask=attention_mask,
            temperature=temperature,
            chunk_rows=chunk_rows,
        )
    b = input_ids.shape[0]
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


def _check_inputs(input_ids: torch.Tensor, completion_length: int, attention_mask: torch.Tensor | None) -> None:
    """The checks every estimator shares, before any forward pass."""
    length = input_ids.shape[1]
    if not 0 < completion_length <= length:
        raise ValueError(f"completion_length={completion_length} must be in [1, {length}] (input length).")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}."
        )


@dataclass(frozen=True)
class ElboTerms:
    """The k (2k with antithetic) masked samples of `mc_elbo`, S rows per sequence: `logps` [S, B, T] log p of
    every completion token in each sample's input, `masked` [S, B, T] the completion positions masked in that
    input, `scored` [S, B, T] those that enter the ELBO (= `masked` without blocks; block-wise, only the
    chosen block's masked tokens, later blocks being masked context), `weight` [S, B] each sample's
    importance weight (cells / masked count, see `elbo_terms`). `block_elbo_terms` noises each block at its own
    level: its `weight` is per token [S, B, T] and `level` [S, B, T] is each token's block's masked fraction,
    the t of SPG's upper bound (None: the row's masked fraction of the completion)."""

    logps: torch.Tensor
    masked: torch.Tensor
    scored: torch.Tensor
    weight: torch.Tensor
    level: torch.Tensor | None = None

    def elbo(self) -> torch.Tensor:
        """Per-token contributions [B, T]: the mean over samples of weight * log p on scored tokens; their
        sum over T is the unbiased ELBO estimate (what `per_token_logps(estimator="mc_elbo")` returns)."""
        weight = self.weight if self.weight.dim() == self.logps.dim() else self.weight[..., None]
        terms = torch.where(self.scored, self.logps * weight, 0.0)
        return terms.mean(dim=0)

    def _per_row(self, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The masked completion tokens [S, B, T], each row's masked fraction of the completion [S, B] and
        which rows have any [S, B] (SPG averages over rows; a row with no masked token, which SPG's law never
        draws and ours does with x = 0, is left out of the average, so the rows kept follow SPG's law)."""
        real = completion_mask.bool()[None]
        chosen = self.masked & real
        count = chosen.sum(dim=-1)
        fraction = count / real.sum(dim=-1).clamp(min=1)
        return chosen, fraction, count > 0

    def elbo_per_token_mean(self, completion_mask: torch.Tensor) -> torch.Tensor:
        """SPG's ELBO per sequence [B] (`_get_per_seq_logps`, logp_estimation "elbo"): the mean over samples of
        the mean log p over the masked completion tokens (masked later blocks included, as SPG's code does).
        Not elbo().sum(-1) / T: without blocks, with a full completion and no empty row it equals
        elbo().sum(-1) / (T + 1) (weight (T+1)/x times a sum over x tokens); padding, blocks and empty rows
        break even that."""
        chosen, _, nonempty = self._per_row(completion_mask)
        row_mean = torch.where(chosen, self.logps, 0.0).sum(dim=-1) / chosen.sum(dim=-1).clamp(min=1)
        return (row_mean * nonempty).sum(dim=0) / nonempty.sum(dim=0).clamp(min=1)

    def eubo(self, beta: float, completion_mask: torch.Tensor) -> torch.Tensor:
        """SPG's upper bound per sequence [B] (`_get_per_seq_logps`, logp_estimation "eubo"): per token, the mean
        over samples of p^beta * masked / t (t: the row's masked fraction of the completion, or the token's
        block's `level`); the log of that, averaged over the completion tokens where it is > 0, divided by beta."""
        chosen, fraction, nonempty = self._per_row(completion_mask)
        t = fraction[..., None] if self.level is None else self.level
        powered = torch.where(chosen, (beta * self.logps).exp(), 0.0) / t.clamp(min=1e-8)
        per_token = (powered * nonempty[..., None]).sum(dim=0) / nonempty.sum(dim=0).clamp(min=1)[:, None]
        kept = per_token > 0
        logs = torch.where(kept, per_token.clamp(min=1e-30).log(), 0.0)
        return logs.sum(dim=-1) / kept.sum(dim=-1).clamp(min=1) / beta


def elbo_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mc: MCOptions | None = None,
    mask_token_id: int | None = None,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ElboTerms:
    """The `mc_elbo` samples of the last `completion_length` (T) tokens, all in one batched forward pass.

    Each sample draws a cell z uniformly from nb * (L + 1) cells (nb blocks of L tokens; without blocks nb = 1,
    L = T): block b = z // (L + 1) and a count x = z % (L + 1), then a uniform x-subset of block b is masked,
    earlier blocks clean, later blocks fully masked; its x scored tokens get weight nb (L + 1) / x. This is
    ESPO's counting (x uniform on {0..L}, weight (L+1)/x) rather than LLaDA's (x on {1..L}, weight L/x): both
    are unbiased for ELBO = sum over nonempty S of (|S|-1)!(L-|S|)!/L! sum_{i in S} log p(x_i | x outside S),
    but only under ESPO's law does the complement L - x have the same law as x, so the antithetic row (the
    rest of block b masked, weight nb (L + 1) / (L - x)) is unbiased too. Block-wise the sum is the ELBO of
    each block given the clean blocks before it and masked ones after (the semi-autoregressive sampler's
    bound): b with probability 1/nb, hence the factor nb. SPG's block_random instead draws x on {1..L},
    scores every masked completion token (later blocks too) and averages per masked token, which is no ELBO
    estimate; `ElboTerms.elbo_per_token_mean` and `eubo` reproduce SPG's per-sequence reductions from
    `masked` (which keeps the later blocks). SPG draws masks within the real completion (post-EOS always
    masked); here masks cover all T positions, the completion mask entering only those reductions.
    "stratified" takes z_j = floor((j + u) * cells / k) for one u ~ U[0, 1) per sequence: each z_j alone is
    not uniform, their average over j is. Each sample draws its own prompt mask (`p_mask_prompt`), shared
    with its antithetic row. Rows s = j * B + b (sample j, sequence b), the antithetic ones after the k * B
    others; every draw comes from `generator`."""
    _check_inputs(input_ids, completion_length, attention_mask)
    mc = mc or MCOptions()
    size = mc.block_length or completion_length
    if completion_length % size:
        raise ValueError(
            f"mc_block_length={mc.block_length} must divide the completion length {completion_length}; "
            "use a divisor or 0 (one block)."
        )
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    b, k, t = input_ids.shape[0], mc.samples, completion_length
    cells = (t // size) * (size + 1)
    z = _draw_cells(k, b, cells, mc.t_sampling, input_ids, generator)
    block, count = z // (size + 1), z % (size + 1)
    position_block = torch.arange(t, device=input_ids.device) // size
    in_block = position_block == block[..., None]  # [k, B, T]
    later = position_block > block[..., None]
    scores = _uniform((k, b, t), input_ids, generator).masked_fill(~in_block, 2.0)
    chosen = scores.argsort(dim=-1).argsort(dim=-1) < count[..., None]  # a uniform count-subset of the block
    scored, sizes = [chosen], [count]
    if mc.antithetic:
        scored, sizes = [chosen, in_block & ~chosen], [count, size - count]
    scored, sizes = torch.cat(scored), torch.cat(sizes)
    reps = len(scored) // k
    masked = scored | later.repeat(reps, 1, 1)
    padding = None if attention_mask is None else attention_mask.repeat(k, 1)
    prompts = mask_prompt(input_ids.repeat(k, 1), t, mask_id, p_mask_prompt, generator, padding)
    targets = input_ids[:, -t:]
    noisy = prompts.view(k, b, -1).repeat(reps, 1, 1)
    noisy[..., -t:] = torch.where(masked, mask_id, targets)
    rows_mask = None if attention_mask is None else attention_mask.repeat(len(scored), 1)
    logits = _completion_logits(model, noisy.flatten(0, 1), rows_mask, t)
    logps = -_nll(logits, targets.repeat(len(scored), 1)).view_as(masked)
    weight = cells / sizes.clamp(min=1).to(torch.float32)
    return ElboTerms(logps=logps, masked=masked, scored=scored, weight=weight)


def _draw_cells(
    k: int, b: int, cells: int, t_sampling: str, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Cell indices [k, B] in {0..cells-1}: independent uniform draws ("random"), or k evenly spaced points
    shifted by one uniform offset per sequence ("stratified")."""
    if t_sampling == "random":
        points = _uniform((k, b), like, generator).double()
    else:
        offset = _uniform((1, b), like, generator).double()
        points = (torch.arange(k, device=like.device, dtype=torch.float64)[:, None] + offset) / k
    return (points * cells).floor().long().clamp(max=cells - 1)


def _check_block_model(model: nn.Module, block_length: int) -> None:
    """The block estimators need the block grid and an unshifted model (LLaDA 2.x, SDAR), before any pass."""
    if block_length < 1:
        raise ValueError(
            f"block_length={block_length}: the block estimators need the model's block grid (the sampler's "
            "block_length, e.g. 32 for LLaDA 2.x, 4 for SDAR)."
        )
    if logits_are_shifted(model):
        raise ValueError(
            "The block estimators score the noisy copy's own columns, so they need an unshifted model (LLaDA 2.x, "
            "SDAR); this model's logits are shifted (Dream-style)."
        )


def _grid(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's position [B, L] (counted from the row's first real token, as `block_diffusion._canvas`
    lays rows out) and whether it is real [B, L]."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    return (real.long().cumsum(dim=1) - 1).clamp(min=0), real


def noisy_width(length: int, completion_length: int, block_length: int) -> int:
    """Columns of the noisy copy: the completion and the block_length - 1 before it, enough for the prompt
    tokens that share a grid block with the completion's start (the sampler decodes them with that block)."""
    return min(length, completion_length + block_length - 1)


def clean_noisy_mask(block: torch.Tensor, real: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean attention [B, 1, N + W, N + W] over the clean sequence (N columns, grid blocks `block` [B, N],
    `real` [B, N] marking padding) followed by a noisy copy of its last W columns (`noisy_width`): a clean
    column sees the real clean columns of its block and the blocks before (block-causal); a noisy column sees
    the real noisy columns of its own block and the real clean columns of the blocks before; padding sees only
    itself. dFactory's block-diffusion training mask (inclusionAI/dFactory 92b6890,
    tasks/train_llada2_bd.py `block_diffusion_mask`: block diagonal within the noisy copy, offset block-causal
    from it to the clean one, block-causal within the clean one), written here with a noisy copy of the
    completion's blocks only and per-row grids (left padding): `block_losses.stream_mask` with the noisy copy
    after the clean columns, plus the diagonal. A prompt token in the completion's first block
    sits in the noisy copy too, so in every layer it sees that block as the sampler shows it (noisy)."""
    n = block.shape[1]
    clean = torch.arange(n + width, device=block.device) < n
    blocks, keys = torch.cat([block, block[:, -width:]], dim=1), torch.cat([real, real[:, -width:]], dim=1)
    return stream_mask(blocks, clean, keys) | torch.eye(n + width, dtype=torch.bool, device=block.device)


def _noisy_logps(
    model: nn.Module, ids: torch.Tensor, noisy: torch.Tensor, position: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log p [R, T] of each clean completion token at its column of the noisy completion `noisy` [R, T], from
    one forward over [clean | noisy copy] under `mask` (`clean_noisy_mask`): the copy is the last W columns
    (the prompt's among them clean), at its clean columns' positions."""
    t, w = noisy.shape[1], mask.shape[-1] - ids.shape[1]
    full = torch.cat([ids, ids[:, -w:-t], noisy], dim=1) if w > t else torch.cat([ids, noisy], dim=1)
    positions = torch.cat([position, position[:, -w:]], dim=1)
    logits, _ = predicting_logits(model, full, t, mask, position_ids=positions)
    return -_nll(logits, ids[:, -t:])


def _completion_blocks(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, completion_length: int, block_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions [B, N], grid blocks [B, N], real columns [B, N] and each completion token's block counted
    from the completion's first [B, T] (the first may be shared with the prompt's end, the last cut short)."""
    position, real = _grid(input_ids, attention_mask)
    block = position // block_length
    local = block[:, -completion_length:] - block[:, -completion_length:][:, :1]
    return position, block, real, local


def block_elbo_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    block_length: int,
    mc: MCOptions | None = None,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ElboTerms:
    """The block-wise ELBO of the last `completion_length` (T) tokens under a block-diffusion model (EBPO,
    LLaDA2.1 report arXiv 2602.08676, section on ELBO-based block-level policy optimization: block-level ELBO
    terms from one block-causal forward over noisy and clean sequences). `mc.samples` samples, all in one
    batched pass; `mc.antithetic` adds each sample's complement within every block. Only `samples` and
    `antithetic` of `mc` are read.

    Per sample, every completion block j (n_j tokens on the grid, `_completion_blocks`) is noised at its own
    level: a count x_j uniform on {0..n_j}, then a uniform x_j-subset masked. That is exactly the law of masking
    each token with probability t_j, t_j ~ U(0, 1) (P(x) = C(n, x) B(x + 1, n - x + 1) = 1 / (n + 1)), and
    the weight (n_j + 1) / x_j of its masked tokens is E[1 / t_j | the mask]: the 1/t ELBO weight of dFactory's
    and EBPO's form with t integrated out (same expectation, finite variance). The sum over tokens is
    unbiased for sum_j ELBO_j, ELBO_j = sum over nonempty S in block j of (|S|-1)!(n_j-|S|)!/n_j! sum_{i in S}
    log p(x_i | prompt, blocks < j clean, block j with S masked): block-causal attention (`clean_noisy_mask`)
    hides every later block, so all blocks are scored at once. Rows s = j * B + b; draws from `generator`;
    the prompt is never masked. SPG's reductions read `masked` and, for the upper bound's t, `level`."""
    _check_inputs(input_ids, completion_length, attention_mask)
    _check_block_model(model, block_length)
    mc = mc or MCOptions()
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    b, t, k = input_ids.shape[0], completion_length, mc.samples
    position, block, real, local = _completion_blocks(input_ids, attention_mask, t, block_length)
    sizes = F.one_hot(local, int(local.max()) + 1).sum(dim=1)  # [B, blocks] completion tokens per block
    count = (_uniform((k, *sizes.shape), input_ids, generator) * (sizes + 1)).floor().long().clamp(max=sizes)
    scores = _uniform((k, b, t), input_ids, generator).double() + local  # each block's scores in [j, j + 1)
    rank = scores.argsort(dim=-1).argsort(dim=-1) - (sizes.cumsum(dim=1) - sizes).gather(1, local)
    token_count = count.gather(2, local.expand(k, b, t))
    token_size = sizes.gather(1, local).expand(k, b, t)
    masked, counts = [rank < token_count], [token_count]
    if mc.antithetic:
        masked, counts = [masked[0], ~masked[0]], [token_count, token_size - token_count]
    masked, counts = torch.cat(masked), torch.cat(counts)
    rows = len(masked)
    noisy = torch.where(masked, mask_id, input_ids[:, -t:]).flatten(0, 1)
    mask = clean_noisy_mask(block, real, noisy_width(input_ids.shape[1], t, block_length)).repeat(rows, 1, 1, 1)
    logps = _noisy_logps(model, input_ids.repeat(rows, 1), noisy, position.repeat(rows, 1), mask)
    sizes = token_size.repeat(rows // k, 1, 1)
    weight = (sizes + 1) / counts.clamp(min=1).to(torch.float32)
    level = counts / sizes.clamp(min=1).to(torch.float32)
    return ElboTerms(logps=logps.view_as(masked), masked=masked, scored=masked, weight=weight, level=level)


def step_groups(steps: torch.Tensor, local: torch.Tensor, shrinkage: int) -> torch.Tensor:
    """Each token's group [B, T] within its block: the block's distinct steps in order, `shrinkage` of them a
    group (TraceRL's `collapse_k_unique`, Gen-Verse/dLLM-RL 10b4fd1 train/rl_sdar.py); -1 where no step
    committed the token (`steps` < 0)."""
    groups = torch.full_like(steps, -1)
    for row in range(len(steps)):
        for j in local[row].unique().tolist():
            where = (local[row] == j) & (steps[row] >= 0)
            _, order = steps[row][where].unique(sorted=True, return_inverse=True)
            groups[row, where] = order // shrinkage
    return groups


def trajectory_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    steps: torch.Tensor,
    *,
    completion_length: int,
    block_length: int,
    shrinkage: int = 1,
    mask_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    chunk_rows: int = 64,
) -> torch.Tensor:
    """TraceRL's likelihood of a block-diffusion rollout's decoding order, [B, T] float32 (Wang et al., "Revolutionizing
    Reinforcement Learning Framework for Diffusion Large Language Models", arXiv 2509.06949; Gen-Verse/dLLM-RL
    10b4fd1 train/rl_sdar.py `one_round_vectorized`, TraceRL branch of `collect_training_data`).

    `steps` [B, T] is the sampler step that committed each completion token (`Trace.committed`; < 0: none, the
    token is never shown nor scored). A token committed at step k is scored given the canvas before step k:
    the prompt, the earlier blocks clean, its block's tokens of steps < k shown and the rest masked. With
    `shrinkage` s, each block's distinct steps go in groups of s (`step_groups`), the group's tokens all
    scored given the canvas before its first step (fewer passes, an approximation for s > 1). Round r scores
    the r-th group of every block at once (block-causal attention hides later blocks), so a sequence takes as
    many rows of [clean | noisy] (`clean_noisy_mask`) as its blocks have groups at most; the rows (round-major,
    those scoring nothing left out) go
    `chunk_rows` per forward pass, each checkpointed when gradients are on. Exact for the sampler's canvas
    when the completion ends on a block boundary; else the sampler also decoded the grid positions past the
    answer in its last block, which are not in `input_ids` (TraceRL's own grid starts at the response)."""
    _check_inputs(input_ids, completion_length, attention_mask)
    _check_block_model(model, block_length)
    t = completion_length
    if steps.shape != (input_ids.shape[0], t) or shrinkage < 1 or chunk_rows < 1:
        raise ValueError(
            f"steps must be [batch, completion_length] = {(input_ids.shape[0], t)} (got {tuple(steps.shape)}), "
            f"shrinkage={shrinkage} >= 1 and chunk_rows={chunk_rows} >= 1."
        )
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    position, block, real, local = _completion_blocks(input_ids, attention_mask, t, block_length)
    groups = step_groups(steps.to(input_ids.device), local, shrinkage)
    rounds = torch.arange(int(groups.max()) + 1, device=input_ids.device)
    round_of_row, sequence = (groups[None] == rounds[:, None, None]).any(dim=-1).nonzero(as_tuple=True)
    mask = clean_noisy_mask(block, real, noisy_width(input_ids.shape[1], t, block_length))
    total = torch.zeros(input_ids.shape[0], t, device=input_ids.device)
    for lo in range(0, len(sequence), chunk_rows):
        seq, r = sequence[lo : lo + chunk_rows], round_of_row[lo : lo + chunk_rows, None]
        hidden = (groups[seq] >= r) | (groups[seq] < 0)
        noisy = torch.where(hidden, mask_id, input_ids[seq, -t:])
        chunk = (model, input_ids[seq], noisy, position[seq], mask[seq])
        logps = checkpoint(_noisy_logps, *chunk, use_reentrant=False) if torch.is_grad_enabled() else _noisy_logps(*chunk)
        total = total.index_add(0, seq, torch.where(groups[seq] == r, logps, 0.0))
    return total


def left_to_right_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_rows: int = 64,
) -> torch.Tensor:
    """JustGRPO's exact log-likelihood of a left-to-right decode, [B, T] float32: token k scored under
    log_softmax(logits / `temperature`) (the rollout's sampling law) with the prompt, completion tokens < k
    visible and tokens >= k masked. The B * T inputs go as rows ordered by step, `chunk_rows` per forward
    pass; a pass asks for the columns of its first to last step (about chunk_rows / B + 1 per row), not
    the whole completion. With gradients on, each pass is checkpointed (its activations recomputed in
    backward), so memory holds one pass, not B * T rows (JustGRPO backpropagates each step on its own). The
    prompt is never masked (there is no p_mask_prompt here: the likelihood is exact, not a randomised
    estimate)."""
    _check_inputs(input_ids, completion_length, attention_mask)
    if temperature <= 0 or chunk_rows < 1:
        raise ValueError(
            f"temperature={temperature} must be > 0 and chunk_rows={chunk_rows} >= 1 (left_to_right)."
        )
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    b, t = input_ids.shape[0], completion_length
    start = input_ids.shape[1] - t
    device = input_ids.device
    steps = torch.arange(t, device=device).repeat_interleave(b)  # step-major rows: nearby rows share columns
    sequences = torch.arange(b, device=device).repeat(t)
    hidden = torch.arange(t, device=device)[None, :] >= steps[:, None]
    logps = []
    for lo in range(0, b * t, chunk_rows):
        step, seq = steps[lo : lo + chunk_rows], sequences[lo : lo + chunk_rows]
        ids = input_ids[seq].clone()
        ids[:, start:] = torch.where(hidden[lo : lo + chunk_rows], mask_id, ids[:, start:])
        first, last = int(step[0]), int(step[-1])
        rows_mask = None if attention_mask is None else attention_mask[seq]
        chunk = (model, ids, slice(start + first, start + last + 1), rows_mask, step - first)
        target = input_ids[seq, start + step]
        if torch.is_grad_enabled():  # keep one chunk's activations at a time: recomputed in backward
            logps.append(checkpoint(_chunk_logps, *chunk, target, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logps(*chunk, target, temperature))
    return torch.cat(logps).view(t, b).T


def _chunk_logps(
    model: nn.Module,
    ids: torch.Tensor,
    columns: slice,
    attention_mask: torch.Tensor | None,
    offsets: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """log_softmax(logits / temperature) of each row's target at its own column (`offsets` into `columns`)."""
    logits, _ = predicting_logits(model, ids, columns, attention_mask)
    column = logits[torch.arange(len(ids), device=ids.device), offsets].float() / temperature
    return column.log_softmax(dim=-1).gather(-1, target[:, None]).squeeze(-1)


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
