"""Fast-dLLM's cached block sampler for Dream (NVlabs/Fast-dLLM `dream/model/generation_utils_block.py`).

It is not LLaDA's block sampler with a cache. Per block of `block_length` tokens:

1. The refresh pass: a full forward over the whole sequence, which also returns every layer's keys/values.
   It commits the block's first token, whatever its confidence.
2. Later passes feed only the block, written over its own slots of that cache (`cache="dual"`), or the block
   and everything after it on the cache of the prompt and finished blocks (`cache="prefix"`); `cache=None`
   runs the full sequence. Only the block's masked positions are candidates.
   - Step mode (`threshold=None`): Dream's schedule inside the block. Time runs over
     `linspace(1, eps, steps_per_block + 1)`; the refresh pass stands for step 0 and pass i (from t_i to
     t_{i+1}) commits `int(n_masked * (1 - t_{i+1} / t_i))` candidates, all that remain at the last step,
     the most confident first under `alg` (default the negative entropy), or drawn from
     softmax(confidence / alg_temp) without replacement when `alg_temp` > 0.
   - Threshold mode: each pass commits the most probable candidate and every other whose probability is at
     least `threshold` (Fast-dLLM's `confidence_threshold`), until the block is done: no step cap.
Tokens: argmax at temperature 0, else sampled from softmax(logits / temperature) after top-p / top-k.

Where d1 departs from the upstream code (tokens unchanged wherever upstream works): left padding is
handled (a 2-D attention mask, positions `cumsum(mask) - 1` as in `diffusion_generate`; upstream's cached
passes ignore positions); counts are per row (upstream: the batch's mean, equal in step mode) and any batch
size works (upstream's threshold and dual-cache paths update or index row 0 only); a pass that would commit
nothing (an empty step of the schedule, a finished block) is skipped; a position that predicts the mask
token is predicted again without it (upstream commits the mask token, which leaves the position masked, and
its threshold mode then never ends); fewer than 2 steps per block, which upstream accepts and leaves masks in
the output, is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.dream_sampling import DreamSampling, sample_tokens
from d1.diffusion.logits import _accepts, predicting_logits
from d1.diffusion.sampling import (
    CACHES,
    check_block_schedule,
    check_prompt,
    parallel_unmask_count,
    resolve_token_id,
    select_transfer,
)
from d1.diffusion.trace import Trace

BLOCK_ALGS = ("entropy", "maskgit_plus", "topk_margin")
PROBABILITY = "maskgit_plus"
"""`dream_sampling`'s name for the confidence = the token's probability (Fast-dLLM's threshold mode)."""


@dataclass
class DreamBlockSampling:
    """The options of `generate_dream_blocks` (Fast-dLLM's cached Dream sampler), with their defaults."""

    gen_length: int = field(default=128, metadata={"help": "Generated tokens per answer (> 0)."})
    block_length: int = field(
        default=32, metadata={"help": "Tokens per block (> 0, dividing gen_length); Fast-dLLM uses 32."}
    )
    steps: int = field(
        default=64,
        metadata={
            "help": "Step mode: forward passes in all, a multiple of the number of blocks with at least 2 "
            "per block (the refresh pass is the first); passes that would commit nothing are skipped. "
            "Unused in threshold mode."
        },
    )
    temperature: float = field(
        default=0.0, metadata={"help": "Token sampling temperature (>= 0; 0 = argmax)."}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus truncation before sampling, in (0, 1]; None = none."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Top-k truncation before sampling (> 0); None = none."}
    )
    alg: str = field(
        default="entropy",
        metadata={
            "help": "Step mode's confidence: entropy (negative entropy, Fast-dLLM's), maskgit_plus (top "
            "probability) or topk_margin (top-1 minus top-2). Threshold mode always uses the probability."
        },
    )
    alg_temp: float | None = field(
        default=None,
        metadata={
            "help": "Step mode: > 0 draws the committed positions from softmax(confidence / alg_temp) "
            "instead of taking the most confident; None or 0 = most confident. Not with threshold."
        },
    )
    eps: float = field(
        default=1e-3, metadata={"help": "Step mode: the schedule's last time, linspace(1, eps); in (0, 1)."}
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "None = step mode; a number = threshold mode: each pass commits the most probable "
            "candidate and every other with probability >= threshold, no step cap (Fast-dLLM: 0.9)."
        },
    )
    cache: str | None = field(
        default="dual",
        metadata={
            "help": "dual (later passes feed the block only), prefix (the block and what follows, on the "
            "prompt and finished blocks' cache) or None (full forward passes)."
        },
    )

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    def validate(self) -> None:
        """Reject bad settings before any forward pass, saying which values work."""
        if self.gen_length <= 0 or self.block_length <= 0 or self.steps <= 0:
            raise ValueError(
                f"gen_length={self.gen_length}, block_length={self.block_length}, steps={self.steps} must "
                "all be positive."
            )
        step_mode = self.threshold is None
        check_block_schedule(self.gen_length, self.block_length, self.steps if step_mode else self.num_blocks)
        per_block = self.steps // self.num_blocks
        if step_mode and per_block < 2 and self.block_length > 1:
            raise ValueError(
                f"steps={self.steps} gives {per_block} step per block ({self.num_blocks} blocks); this "
                "sampler needs at least 2 (the refresh pass commits only the block's first token): use "
                f"steps >= {2 * self.num_blocks}, or threshold mode."
            )
        if self.cache not in CACHES:
            raise ValueError(f"cache={self.cache!r} is not one of {CACHES} (None = full forward passes).")
        if self.alg not in BLOCK_ALGS:
            raise ValueError(f"alg={self.alg!r} is not one of {BLOCK_ALGS}.")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold={self.threshold} must be a finite number, or None for step mode.")
        if self.threshold is not None and self.alg_temp:
            raise ValueError(
                f"alg_temp={self.alg_temp} applies to step mode only; drop it or set threshold=None."
            )
        sampling = DreamSampling(
            steps=self.steps,
            eps=self.eps,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            alg=self.alg,
            alg_temp=self.alg_temp,
        )
        sampling.validate()  # temperature, top_p, top_k, alg_temp, eps: Dream's own checks and messages

    def token_rule(self, confidence: str) -> DreamSampling:
        """`dream_sampling.sample_tokens`'s settings: these token options, confidence rule `confidence`."""
        return DreamSampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, alg=confidence)


def _gumbel_keys(scores: torch.Tensor, alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """scores / alg_temp plus Gumbel noise: the top k of these keys are k draws without replacement from
    softmax(scores / alg_temp) (Dream's `multinomial` over positions, batched with a per-row k)."""
    uniform = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float64)
    return scores.double() / alg_temp - uniform.clamp(min=1e-20).log().neg().log()


@dataclass
class _BlockDecoder:
    """What every pass of one call shares; decodes one block at a time, in place."""

    model: nn.Module
    options: DreamBlockSampling
    mask_id: int
    attention_mask: torch.Tensor | None
    generator: torch.Generator | None
    trace: Trace | None
    prompt_length: int

    def predict(
        self, logits: torch.Tensor, confidence_rule: str, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, token) of each row of `logits` [N, V] by `dream_sampling.sample_tokens`. Rows that
        predict the mask token (among `rows` [N], when given) are predicted again without it (committed, it
        would leave its position masked and a threshold-mode block unfinished)."""
        rule = self.options.token_rule(confidence_rule)
        confidence, tokens = sample_tokens(logits, rule, self.generator)
        is_mask = tokens == self.mask_id
        if rows is not None:
            is_mask &= rows
        if is_mask.any():  # one host sync; the rare re-prediction indexes by mask
            without = logits[is_mask].index_fill(-1, tokens.new_tensor([self.mask_id]), -torch.inf)
            confidence[is_mask], tokens[is_mask] = sample_tokens(without, rule, self.generator)
        return confidence, tokens

    def refresh(self, x: torch.Tensor, start: int, block: int) -> Any:
        """The block's first pass: a full forward that commits x[:, start] and returns the cache to decode
        the rest of the block on (the whole sequence's for dual, the part before the block for prefix)."""
        cache_args = {} if self.options.cache is None else {"use_cache": True}
        logits, out = predicting_logits(
            self.model, x, slice(start, start + 1), self.attention_mask, **cache_args
        )
        tokens = self.predict(logits[:, 0], PROBABILITY)[1]
        x[:, start] = tokens
        if self.trace is not None:
            decided = torch.ones_like(tokens, dtype=torch.bool)[:, None]
            self.trace.record(block, start - self.prompt_length, decided, tokens[:, None], logits)
        cache = getattr(out, "cache", None)
        if self.options.cache == "prefix":
            cache = tuple((k[:, :, :start], v[:, :, :start]) for k, v in cache)
        return cache

    def block_logits(self, x: torch.Tensor, start: int, end: int, cache: Any) -> torch.Tensor:
        """Logits [B, end - start, V] predicting the block's columns, from the pass `options.cache` asks for.
        A shifted model's first column reads its own output (as upstream); it is never a candidate here."""
        keep = slice(0, end - start)
        if self.options.cache == "dual":
            ids, extra = x[:, start:end], {"cache": cache, "cache_position": slice(start, end)}
        elif self.options.cache == "prefix":
            ids, extra = x[:, start:], {"cache": cache}
        else:
            ids, extra, keep = x, {}, slice(start, end)
        return predicting_logits(self.model, ids, keep, self.attention_mask, **extra)[0]

    def schedule_counts(self, masked: torch.Tensor, step: int, times: torch.Tensor) -> torch.Tensor:
        """Step mode's commits per row [B] at pass `step` >= 1: int(n_masked * (1 - t_{i+1} / t_i)), all that
        remain at the block's last step."""
        left = masked.sum(dim=-1)
        if step == len(times) - 2:
            return left
        return (left * (1 - times[step + 1] / times[step])).long()

    def predict_block(
        self, logits: torch.Tensor, candidates: torch.Tensor, confidence_rule: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Confidence (-inf elsewhere) and token (the mask id elsewhere) [B, W] of the block's `candidates`.
        Sampling draws for the candidate rows only, in upstream's order; greedy decoding predicts every
        row of the block, so that no boolean indexing (a host sync) picks the candidates."""
        if self.options.temperature > 0:
            confidence, tokens = self.predict(logits[candidates], confidence_rule)
            scores = torch.full(candidates.shape, -torch.inf, dtype=confidence.dtype, device=logits.device)
            scores[candidates] = confidence
            x0 = torch.full_like(candidates, self.mask_id, dtype=torch.long)
            x0[candidates] = tokens
            return scores, x0
        rows = candidates.flatten()
        confidence, tokens = self.predict(logits.flatten(0, 1), confidence_rule, rows)
        scores = confidence.view(candidates.shape).masked_fill(~candidates, -torch.inf)
        return scores, torch.where(candidates, tokens.view(candidates.shape), self.mask_id)

    def commit(
        self, x: torch.Tensor, start: int, end: int, cache: Any, counts: torch.Tensor | None, block: int
    ) -> None:
        """One cached pass: commit `counts` candidates per row (step mode), or the threshold rule's
        (`counts` None), writing them into x and the trace."""
        logits = self.block_logits(x, start, end, cache)
        candidates = x[:, start:end] == self.mask_id
        threshold_mode = counts is None
        scores, x0 = self.predict_block(logits, candidates, PROBABILITY if threshold_mode else self.options.alg)
        if threshold_mode:
            counts = parallel_unmask_count(scores, candidates, "threshold", self.options.threshold, 1.0)
        elif self.options.alg_temp:
            scores = _gumbel_keys(scores, self.options.alg_temp, self.generator)
        transfer = select_transfer(scores, candidates, counts)
        x[:, start:end] = torch.where(transfer, x0, x[:, start:end])
        if self.trace is not None:
            self.trace.record(block, start - self.prompt_length, transfer, x0, logits)

    def decode_block(self, x: torch.Tensor, block: int) -> int:
        """Unmask block `block` of x in place; returns the number of forward passes."""
        options = self.options
        start = self.prompt_length + block * options.block_length
        end = start + options.block_length
        cache = self.refresh(x, start, block)
        passes, step = 1, 1
        times = torch.linspace(1, options.eps, options.steps // options.num_blocks + 1, device=x.device)
        while (masked := x[:, start:end] == self.mask_id).any():
            counts = None
            if options.threshold is None:
                counts = self.schedule_counts(masked, step, times)
                step += 1
                if not counts.any():
                    continue
            self.commit(x, start, end, cache, counts, block)
            passes += 1
        return passes


@torch.no_grad()
def generate_dream_blocks(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    threshold: float | None = None,
    cache: str | None = "dual",
    mask_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    trace: Trace | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Prompt plus `gen_length` tokens [B, P + gen_length] by Fast-dLLM's cached Dream sampler (the module
    docstring gives the rules; `DreamBlockSampling` the options).

    `attention_mask` [B, P] marks left padding (1 real, 0 pad). `generator` drives every random draw
    (sampled tokens, `alg_temp`). `trace` (a `d1.diffusion.trace.Trace`) records what each forward pass
    decided; `stats` receives "forward_passes" and "steps" (equal: one pass a step)."""
    options = DreamBlockSampling(
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        alg=alg,
        alg_temp=alg_temp,
        eps=eps,
        threshold=threshold,
        cache=cache,
    )
    options.validate()
    check_prompt(prompt_ids, attention_mask)
    if cache is not None and not _accepts(model, "cache"):
        raise ValueError(f"cache={cache!r} needs a model whose forward takes `cache` (d1's native Dream).")
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    batch, prompt_length = prompt_ids.shape
    x = F.pad(prompt_ids, (0, gen_length), value=mask_id)
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask, (0, gen_length), value=1)
    if trace is not None:
        trace.start(batch, gen_length, block_length)
    decoder = _BlockDecoder(model, options, mask_id, attention_mask, generator, trace, prompt_length)
    passes = sum(decoder.decode_block(x, block) for block in range(options.num_blocks))
    if stats is not None:
        stats.update(forward_passes=passes, steps=passes)
    return x
