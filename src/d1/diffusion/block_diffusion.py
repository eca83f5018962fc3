"""Block diffusion decoding (LLaDA 2.x, SDAR): blocks on a grid from the prompt's first token, block-causal
attention, finished blocks' keys/values cached.

The official samplers (dFactory's `LLaDA2MoeModelLM.generate`, SDAR's `block_diffusion_generate`) take one
prompt: the canvas is the prompt, then masks up to the end of the block holding position prompt + gen_length,
on a grid of `block_length` from position 0. Each block from the one holding the prompt's end is denoised in
`steps` passes: a step commits every masked token whose confidence is above `threshold` when at least the
step's quota are, else the quota most confident (the quotas split the block length evenly, the remainder first).
A row stops once its first EOS is decoded with nothing masked before it, and its answer ends there.

Here prompts are batched. Each row's grid starts at its own first token: rows are left-padded by whole blocks
so that every prompt ends in the same block, and all rows decode the same block together (a finished row
idles). Block-causal attention makes the cache exact: a finished block's keys/values never change, so the
cached decoder (the default) returns the same tokens as recomputing the prefix at every step (the official
loop, `cache=False`). Greedy (temperature 0) takes the argmax; the official LLaDA 2.x code samples at
temperature 1 there, and SDAR's divides by zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.logits import truncate_logits
from d1.diffusion.trace import Trace


def is_block_diffusion(model: nn.Module) -> bool:
    """Whether the model attends block-causally and decodes with this sampler (`config.block_diffusion`),
    looking through the `module` of DDP, DeepSpeed and FSDP (peft models expose their base model's config)."""
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and inner is not model:
        return is_block_diffusion(inner)
    return bool(getattr(getattr(model, "config", None), "block_diffusion", False))


@dataclass(frozen=True)
class BlockDiffusionSampling:
    """The settings of `generate_blocks`, in the official samplers' terms (`steps` per block)."""

    gen_length: int = 128
    block_length: int = 32
    steps: int = 32
    temperature: float = 0.0
    threshold: float | None = None
    """Commit every masked token above it when at least the step's quota are; None: the quota only."""
    top_k: int | None = None
    top_p: float | None = None
    cache: bool = True
    """Keep finished blocks' keys/values (exact under block-causal attention); False: recompute the prefix."""

    def validate(self) -> None:
        """Reject settings the sampler cannot run, naming the value and the fix."""
        if min(self.gen_length, self.block_length, self.steps) <= 0:
            raise ValueError(
                f"gen_length={self.gen_length}, block_length={self.block_length}, steps={self.steps} (per block) "
                "must all be positive."
            )
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1] (a probability).")
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature={self.temperature} must be a finite number >= 0 (0 = greedy).")

    @staticmethod
    def steps_per_block(gen_length: int, block_length: int, diffusion_steps: int) -> int:
        """The official `steps` a block for d1's `diffusion_steps` over the whole answer."""
        return diffusion_steps * block_length // gen_length

    def quotas(self) -> list[int]:
        """Tokens each step of a block must commit at least: block_length split evenly over the steps (more
        steps than positions decode as one a step, since the official quotas then end in zeros after the
        block is done)."""
        steps = min(self.steps, self.block_length)
        base, extra = divmod(self.block_length, steps)
        return [base + (step < extra) for step in range(steps)]


@dataclass
class _Canvas:
    """Every row's grid on one tensor: row b's position 0 sits at column `offset[b]` (a multiple of the block
    length), its first generated token at `gen_start[b]`, and its grid ends at column `end[b]`."""

    x: torch.Tensor
    offset: torch.Tensor
    gen_start: torch.Tensor
    end: torch.Tensor
    first_block: int
    block_length: int
    position_ids: torch.Tensor = field(init=False)
    valid: torch.Tensor = field(init=False)

    columns: torch.Tensor = field(init=False)
    generated: torch.Tensor = field(init=False)
    """[B, W]: each row's columns after its prompt, up to its grid's end."""

    def __post_init__(self) -> None:
        self.columns = torch.arange(self.x.shape[1], device=self.x.device)
        self.position_ids = (self.columns - self.offset[:, None]).clamp(min=0)
        self.valid = (self.columns >= self.offset[:, None]) & (self.columns < self.end[:, None])
        self.generated = (self.columns >= self.gen_start[:, None]) & (self.columns < self.end[:, None])

    def answer_index(self, gen_length: int) -> torch.Tensor:
        """Canvas columns of each row's answer tokens [B, gen_length]."""
        return self.gen_start[:, None] + self.columns[:gen_length]


def _canvas(
    prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None, settings: BlockDiffusionSampling, mask_id: int,
    pad_id: int,
) -> _Canvas:  # fmt: skip
    """Lay out the left-padded prompts so that every row's grid starts at a block boundary and every prompt
    ends in the same block; masks fill each row's grid after its prompt, `pad_id` the rest."""
    block = settings.block_length
    real = torch.ones_like(prompt_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    lengths = real.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("A prompt has no token (its attention_mask row is all zeros); every row needs one.")
    full_blocks = lengths // block
    first_block = int(full_blocks.max())
    offset = (first_block - full_blocks) * block
    end = offset + (lengths + settings.gen_length + block - 1) // block * block
    width = int(end.max())
    x = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long, device=prompt_ids.device)
    canvas = _Canvas(x, offset, offset + lengths, end, first_block, block)
    x[canvas.generated] = mask_id
    rows, source = real.nonzero(as_tuple=True)
    rank = real.long().cumsum(dim=1) - 1
    x[rows, offset[rows] + rank[rows, source]] = prompt_ids[rows, source]
    return canvas


def _check_context(model: nn.Module, canvas: _Canvas) -> None:
    """Refuse a canvas longer than the model's context (`max_position_embeddings`), before any forward pass."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    needed = int((canvas.end - canvas.offset).max())
    if limit is not None and needed > limit:
        raise ValueError(
            f"The longest prompt plus gen_length, rounded up to whole blocks, takes {needed} positions, more than "
            f"the model's context (max_position_embeddings={limit}); shorten the prompt or gen_length."
        )


def _block_causal(canvas: _Canvas, queries: slice, keys: int) -> torch.Tensor:
    """Boolean attention [B, 1, Q, K] of the query columns `queries` over columns 0..keys: a column sees every
    valid column of its own block and the blocks before (and itself, so padding stays finite)."""
    q, k = canvas.columns[queries], canvas.columns[:keys]
    block = canvas.block_length
    see = (k[None, :] // block <= q[:, None] // block)[None] & canvas.valid[:, None, :keys]
    return (see | (q[:, None] == k[None, :])[None])[:, None]


def _predict(logits: torch.Tensor, settings: BlockDiffusionSampling, generator: torch.Generator | None):
    """Tokens [B, W] and their probabilities: top-k then top-p truncation (the official order), then the argmax
    at temperature 0, else a sample of softmax(logits / temperature)."""
    logits = logits.float()
    if settings.temperature > 0:
        logits = logits / settings.temperature
    logits = truncate_logits(truncate_logits(logits, None, settings.top_k), settings.top_p, None)
    probs = F.softmax(logits, dim=-1)
    if settings.temperature == 0:
        confidence, tokens = probs.max(dim=-1)
        return tokens, confidence
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def _commit(
    confidence: torch.Tensor, masked: torch.Tensor, quota: int, threshold: float | None
) -> torch.Tensor:
    """The positions a step commits [B, W]: every masked one above `threshold` when at least `quota` are,
    else the `quota` most confident (fewer when fewer are masked)."""
    confidence = confidence.masked_fill(~masked, float("-inf"))
    rank = confidence.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    take = (rank < torch.clamp(masked.sum(dim=-1, keepdim=True), max=quota)) & masked
    if threshold is None:
        return take
    high = confidence > threshold
    return torch.where(high.sum(dim=-1, keepdim=True) >= quota, high, take)


@dataclass
class _Decoder:
    """The model calls of one `generate_blocks` run: the cache, the pass counts and the trace."""

    model: nn.Module
    canvas: _Canvas
    settings: BlockDiffusionSampling
    cache: Any = None
    cached: int = 0
    passes: int = 0
    block_passes: list[int] = field(default_factory=list)

    def block_logits(self, block: int) -> torch.Tensor:
        """Logits [B, block_length, V] of block number `block`, every earlier block final. With the cache, the
        first pass of a block also appends the blocks finished since the last one to the cache."""
        length = self.canvas.block_length
        start, stop = block * length, (block + 1) * length
        first = self.cached if self.settings.cache else 0
        append = self.settings.cache and first < start
        out = self.model(
            self.canvas.x[:, first:stop],
            attention_mask=_block_causal(self.canvas, slice(first, stop), stop),
            position_ids=self.canvas.position_ids[:, first:stop],
            cache=self.cache,
            use_cache=append,
            logits_to_keep=length,
        )
        if append:
            self.cache = tuple((k[:, :, :start], v[:, :, :start]) for k, v in out.cache)
            self.cached = start
        self.passes += 1
        return out.logits[:, -length:]


def _finished(canvas: _Canvas, eos_id: int | None, mask_id: int) -> torch.Tensor:
    """Rows whose first generated EOS has nothing masked before it [B]: their answer is final."""
    if eos_id is None:
        return torch.zeros(len(canvas.x), dtype=torch.bool, device=canvas.x.device)
    eos = (canvas.x == eos_id) & canvas.generated
    first_eos = torch.where(eos.any(dim=1), eos.float().argmax(dim=1), canvas.end)
    masked_before = ((canvas.x == mask_id) & canvas.generated & (canvas.columns < first_eos[:, None])).any(dim=1)
    return eos.any(dim=1) & ~masked_before


def _answers(answer: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """The answers [B, gen_length] with everything after the first EOS (positions a finished row left masked
    included) set to EOS, as the official samplers cut there."""
    if eos_id is None:
        return answer
    return answer.masked_fill((answer == eos_id).long().cumsum(dim=1) > 0, eos_id)


@torch.no_grad()
def generate_blocks(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    settings: BlockDiffusionSampling,
    *,
    mask_token_id: int,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    trace: Trace | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Prompt plus `gen_length` generated tokens [B, P + gen_length] by block diffusion (module docstring).

    `attention_mask` [B, P] marks left padding (1 real, 0 pad). Each answer ends at its first EOS, the rest
    filled with EOS (the official samplers cut there); without `eos_token_id` every block is decoded.
    `stats` receives "forward_passes", "steps" and "block_passes"; `trace` each step's decisions, positions
    counted from the row's first generated token."""
    settings.validate()
    if prompt_ids.dim() != 2 or (attention_mask is not None and attention_mask.shape != prompt_ids.shape):
        raise ValueError(
            f"prompt_ids must be [batch, prompt_length] and attention_mask the same shape; got "
            f"{tuple(prompt_ids.shape)} and {None if attention_mask is None else tuple(attention_mask.shape)}."
        )
    pad_id = eos_token_id if eos_token_id is not None else int(prompt_ids.min())
    canvas = _canvas(prompt_ids, attention_mask, settings, mask_token_id, pad_id)
    _check_context(model, canvas)
    decoder = _Decoder(model, canvas, settings)
    length, quotas = settings.block_length, settings.quotas()
    if trace is not None:
        trace.start(len(prompt_ids), settings.gen_length, length)
    done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=prompt_ids.device)  # nothing decoded yet
    for block in range(canvas.first_block, canvas.x.shape[1] // length):
        window = slice(block * length, (block + 1) * length)
        passes = 0
        for quota in quotas:
            masked = (canvas.x[:, window] == mask_token_id) & ~done[:, None]
            if not bool(masked.any()):
                break
            tokens, confidence = _predict(decoder.block_logits(block), settings, generator)
            take = _commit(confidence, masked, quota, settings.threshold)
            canvas.x[:, window] = torch.where(take, tokens, canvas.x[:, window])
            passes += 1
            if trace is not None:
                _record(trace, canvas, window, take, tokens, confidence, block - canvas.first_block)
            done |= _finished(canvas, eos_token_id, mask_token_id)
        decoder.block_passes.append(passes)
        if bool(done.all()):
            break
    if stats is not None:
        stats.update(forward_passes=decoder.passes, steps=decoder.passes, block_passes=decoder.block_passes)
    answer = canvas.x.gather(1, canvas.answer_index(settings.gen_length))
    if trace is not None and eos_token_id is not None:
        trace.fill(answer == mask_token_id, 0, eos_token_id)
    return torch.cat([prompt_ids, _answers(answer, eos_token_id)], dim=1)


def _record(
    trace: Trace, canvas: _Canvas, window: slice, take: torch.Tensor, tokens: torch.Tensor,
    confidence: torch.Tensor, block: int,
) -> None:  # fmt: skip
    """Trace one step: the committed positions of the answer (counted from each row's first generated token;
    grid positions past `gen_length` are not part of the answer)."""
    offset = window.start - canvas.gen_start
    position = offset[:, None] + torch.arange(take.shape[1], device=take.device)
    kept = take & (position >= 0) & (position < trace.rows[0].gen_length)
    trace.record_rows(block, offset, kept, tokens, confidence)
