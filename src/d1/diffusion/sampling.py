"""LLaDA's reverse process: semi-autoregressive, block-by-block unmasking of a fully masked completion.

Reproduces `generate` from LLaDA's `generate.py` (low-confidence or random remasking, Gumbel-max sampling in
float64, optional classifier-free guidance and EOS/EoT suppression), batched. Randomness comes from
`generator`, else torch's global RNG, drawn in LLaDA's order and shapes (same seed, same samples).
Each step is "logits -> (x0, confidence) -> transfer mask"; those pieces are separate functions so other
decoding schedules can reuse them. The exact path asks the model only for the logits it needs (from the first
masked column to the block's end), in float64 only over that window; random numbers are still drawn for the
whole sequence (a CPU generator keeps only the window's, see `window_rand`). A step reads nothing back from
the device (no host sync) except the window's first column (exact decoding, a cached block's first step) and
whether a block is done (parallel unmasking); a block adds one more (its largest masked count).

Fast-dLLM's approximations (opt-in), token for token as Fast-dLLM's `llada/generate.py` decodes greedily
(tests/fixtures/fastdllm_llada.json): a block KV cache, refreshed by a full forward at each block's first
step; later steps feed the block plus everything after it on the cached prefix ("prefix", as Fast-dLLM's
`generate_with_prefix_cache`) or only the block, written over its slots of the full cache ("dual").
Parallel unmasking ("threshold", "factor": Fast-dLLM's `get_transfer_index(_dynamic)`; "factor_strict")
commits the confident enough tokens, at least one a step, until the block is done; `max_block_steps` caps the
forward passes a block may take (each step then commits at least the block's remaining masks / steps left).

`block_length=1, steps=gen_length` decodes left to right, one token a step: JustGRPO's rollouts. `prefill`
fixes completion tokens in place, the rest decoded around them: IGPO's inpainting of hints.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.block_diffusion import BlockDiffusionSampling, generate_blocks, is_block_diffusion
from d1.diffusion.logits import _accepts, logits_are_shifted, predicting_logits
from d1.diffusion.trace import Trace

REMASKING = ("low_confidence", "random")
CACHES = (None, "prefix", "dual")
UNMASKS = ("schedule", "threshold", "factor", "factor_strict")


def resolve_token_id(model: nn.Module, token_id: int | None, field: str) -> int:
    """`token_id` if given, else `model.config.<field>`; a clear error when neither exists."""
    if token_id is None:
        token_id = getattr(getattr(model, "config", None), field, None)
    if token_id is None:
        raise ValueError(f"No {field} given and the model's config has none; pass {field}=... explicitly.")
    return int(token_id)


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each of `steps` steps [B, steps]: each row's masked count split evenly, the
    remainder going one each to the earliest steps (LLaDA's linear schedule, `get_num_transfer_tokens`)."""
    masked = mask_index.sum(dim=1, keepdim=True)
    base, remainder = masked // steps, masked % steps
    return base + (torch.arange(steps, device=mask_index.device) < remainder).long()


def window_rand(
    shape: tuple[int, ...],
    stream: tuple[int, int] | None,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Uniform draws of `shape` [B, W, ...] for columns first..first+W of a [B, length, ...] draw, where
    `stream` = (first, length) (None: the whole draw), in the stream of one `torch.rand` of the full shape.

    A CPU generator draws row by row, keeping only the window (its stream does not depend on how a draw is
    split); other generators draw the full tensor and keep a copy of the window."""
    first, length = stream if stream is not None else (0, shape[1])
    source = generator.device if generator is not None else device
    full = (shape[0], length, *shape[2:])
    if source.type != "cpu" or length == shape[1]:
        draw = torch.rand(full, dtype=dtype, generator=generator, device=source)
        return draw.to(device) if length == shape[1] else draw[:, first : first + shape[1]].to(device, copy=True)
    row = math.prod(shape[2:])
    window = torch.empty(shape, dtype=dtype)
    skip = torch.empty(min(max(length - shape[1], 1) * row, 1 << 22), dtype=dtype)
    for b in range(shape[0]):
        _discard(first * row, skip, generator)
        window[b].uniform_(0, 1, generator=generator)
        _discard((length - first - shape[1]) * row, skip, generator)
    return window.to(device)


def _discard(count: int, scratch: torch.Tensor, generator: torch.Generator | None) -> None:
    """Advance `generator` past `count` uniform draws of scratch's dtype, `scratch` at a time."""
    for start in range(0, count, scratch.numel()):
        scratch[: min(scratch.numel(), count - start)].uniform_(0, 1, generator=generator)


def gumbel_argmax(
    logits: torch.Tensor,
    rows: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    stream: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Samples of softmax(logits / temperature) at `rows` (bool [B, W]), argmax elsewhere [B, W]: the argmax of
    exp(logits) / (-log u)^temperature in float64 (LLaDA found low-precision Gumbel noise hurts quality),
    u drawn for every position as LLaDA does (`stream`: see `window_rand`). The float64 work is done in place
    over the whole window (no boolean indexing, whose data-dependent shape costs a host sync), so it holds
    the window's noise and one more [B, W, V] float64 tensor."""
    x0 = logits.argmax(dim=-1)
    if temperature == 0:
        return x0
    noise = window_rand(tuple(logits.shape), stream, generator, logits.device)
    scores = logits.to(torch.float64, copy=True).exp_()
    sampled = scores.div_(noise.log_().neg_().pow_(temperature)).argmax(dim=-1)
    return torch.where(rows, sampled, x0)


def predict_tokens(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    *,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
    suppress_ids: tuple[int, ...] = (),
    stream: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted tokens x0 [B, W] (sampled at `candidates`, greedy elsewhere) and their confidence [B, W]
    (-inf outside `candidates`).

    low_confidence: confidence = softmax probability of x0, in float64 like LLaDA (every row of the window:
    selecting the candidate rows would cost a host sync a step). random: uniform draws. Predictions in
    `suppress_ids` get -inf confidence (committed last).
    `stream` = (first, length): the window covers columns first..first+W of a length-`length` sequence and
    random numbers are drawn for all of it, in LLaDA's order and shapes.
    """
    x0 = gumbel_argmax(logits, candidates, temperature, generator, stream)
    if remasking == "low_confidence":
        probs = F.softmax(logits.to(torch.float64), dim=-1)
        confidence = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence = window_rand(tuple(x0.shape), stream, generator, x0.device, torch.float32)
    confidence = confidence.masked_fill(~candidates, float("-inf"))
    if suppress_ids:
        suppressed = functools.reduce(torch.logical_or, [x0 == token for token in suppress_ids])
        confidence = confidence.masked_fill(suppressed, float("-inf"))
    return x0, confidence


def select_transfer(confidence: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: the k[b] most confident candidates of each row, batched: one stable sort (equal
    confidences go left to right), so no host sync to read max k as a top-k would need.

    Candidates with -inf confidence rank below every other candidate but above every non-candidate.
    """
    lowest = torch.finfo(confidence.dtype).min
    key = torch.where(candidates, confidence.clamp(min=lowest), float("-inf"))
    order = key.argsort(dim=-1, descending=True, stable=True)
    keep = torch.arange(order.shape[1], device=k.device) < k[:, None]
    return torch.zeros_like(candidates).scatter(-1, order, keep) & candidates


def parallel_unmask_count(
    confidence: torch.Tensor, candidates: torch.Tensor, unmask: str, threshold: float, factor: float
) -> torch.Tensor:
    """Tokens each row unmasks [B], the most confident first: at least one while its m candidates last.

    threshold: the most confident plus every candidate with confidence >= `threshold` (Fast-dLLM's
    `get_transfer_index`). factor_strict: the longest run of the n most confident whose n-th has confidence
    >= 1 - factor / (n + 1). factor (Fast-dLLM's `get_transfer_index_dynamic`): the same run, but all m when
    it stops at the last candidate (n = m - 1), so the last two candidates are always committed together.
    """
    available = candidates.sum(dim=-1)
    ranked = confidence.masked_fill(~candidates, float("-inf")).sort(dim=-1, descending=True).values
    if unmask == "threshold":
        passes = ranked >= threshold
    else:
        n = torch.arange(1, ranked.shape[-1] + 1, dtype=torch.float64, device=ranked.device)
        passes = ranked >= (1 - factor / (n + 1)).to(ranked.dtype)  # compared as Fast-dLLM's Python floats
    run = passes.long().cumprod(dim=-1).sum(dim=-1).clamp(min=1)
    if unmask == "factor":
        run = torch.where(run >= available - 1, available, run)
    return torch.minimum(run, available)


def check_block_schedule(
    gen_length: int,
    block_length: int,
    steps: int,
    names: tuple[str, str, str] = ("gen_length", "block_length", "steps"),
) -> None:
    """Blocks must tile the generation and every block gets the same number of steps; the error names the
    fields as the caller's config calls them (`names`) and says which values would work."""
    length_name, block_name, steps_name = names
    if gen_length % block_length:
        divisors = [d for d in range(1, gen_length + 1) if gen_length % d == 0]
        raise ValueError(
            f"{length_name}={gen_length} must be a multiple of {block_name}={block_length}; "
            f"{block_name} values that divide it: {divisors}."
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        lower, upper = steps // num_blocks * num_blocks, (steps // num_blocks + 1) * num_blocks
        nearby = [s for s in (lower, upper) if s > 0]
        raise ValueError(
            f"{steps_name}={steps} must be a multiple of the number of blocks {num_blocks} ({length_name}="
            f"{gen_length} / {block_name}={block_length}); e.g. {steps_name}={' or '.join(map(str, nearby))}."
        )


def check_prompt(prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """The prompt is [batch, length] and its attention mask, if any, has the same shape."""
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [batch, prompt_length], got shape {tuple(prompt_ids.shape)}.")
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal prompt_ids shape {tuple(prompt_ids.shape)}."
        )


def check_settings(
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    cache: str | None = None,
    unmask: str = "schedule",
    threshold: float = 0.9,
    factor: float = 1.0,
    max_block_steps: int | None = None,
    names: tuple[str, str, str] = ("gen_length", "block_length", "steps"),
    **_: Any,
) -> None:
    """Reject bad sampler settings before any forward pass, saying which values would work (`names`: what the
    caller calls the length, block and steps options). Options that need no check pass through `_`."""
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise ValueError(
            f"{names[0]}={gen_length}, {names[1]}={block_length}, {names[2]}={steps} must all be positive."
        )
    check_block_schedule(gen_length, block_length, steps, names)
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r} is not one of {REMASKING}.")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy).")
    if not 0 <= cfg_scale < math.inf:
        raise ValueError(f"cfg_scale={cfg_scale} must be a finite number >= 0 (0 = no classifier-free guidance).")
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r} is not one of {CACHES} (None = exact decoding, no cache).")
    if unmask not in UNMASKS:
        raise ValueError(f"unmask={unmask!r} is not one of {UNMASKS}.")
    if not math.isfinite(threshold):
        raise ValueError(
            f"threshold={threshold} must be a finite number (values > 1 unmask one token a step)."
        )
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor={factor} must be a finite number > 0 (Fast-dLLM uses about 1).")
    if max_block_steps is not None:
        if unmask == "schedule":
            raise ValueError(
                f"max_block_steps={max_block_steps} caps parallel unmasking; unmask='schedule' already takes "
                "steps / number of blocks steps a block. Drop max_block_steps or use a parallel unmask "
                f"({', '.join(UNMASKS[1:])})."
            )
        if isinstance(max_block_steps, bool) or not isinstance(max_block_steps, int) or max_block_steps < 1:
            raise ValueError(
                f"max_block_steps={max_block_steps!r} must be a positive integer (forward passes a block may "
                "take) or None (decode each block until it is done, as Fast-dLLM)."
            )


def _check_prefill(prefill: torch.Tensor | None, batch: int, gen_length: int, early_stop: bool) -> None:
    """A prefill is an integer [batch, gen_length] tensor; early stop would write EOS over its tokens."""
    if prefill is None:
        return
    if tuple(prefill.shape) != (batch, gen_length):
        raise ValueError(
            f"prefill shape {tuple(prefill.shape)} must be [batch, gen_length] = [{batch}, {gen_length}] "
            "(completion tokens, mask_token_id where free)."
        )
    if prefill.dtype.is_floating_point or prefill.dtype == torch.bool:
        raise ValueError(f"prefill dtype {prefill.dtype} must be an integer dtype of token ids (torch.long).")
    if early_stop:
        raise ValueError("early_stop=True fills finished rows with EOS over prefilled tokens; drop one of them.")


@dataclass
class _Decoder:
    """The settings every denoising step shares; decodes one block at a time, in place, counting its forward
    passes (`passes`; per block: `block_passes`) and the denoising steps among them (`steps`)."""

    model: nn.Module
    mask_id: int
    attention_mask: torch.Tensor | None
    prompt_index: torch.Tensor
    cfg_scale: float
    forbidden_id: int | None
    temperature: float
    remasking: str
    generator: torch.Generator | None
    suppress_ids: tuple[int, ...]
    cache: str | None
    unmask: str
    threshold: float
    factor: float
    max_block_steps: int | None = None
    sync_done: Callable[[bool], bool] | None = None
    trace: Trace | None = None
    gen_start: int = 0
    passes: int = 0
    steps: int = 0
    block_passes: list[int] = field(default_factory=list)

    def all_done(self, done: bool) -> bool:
        """Whether every process is done (`done` itself without `sync_done`)."""
        return done if self.sync_done is None else self.sync_done(done)

    def join_forward(self, x: torch.Tensor) -> None:
        """A forward pass whose result is dropped, so that a finished process keeps joining the collectives of
        the others' forward passes (sharded weights); it draws no random numbers and changes no token."""
        self.logits(x, slice(None), slice(x.shape[1] - 1, None))

    @property
    def exact_rng(self) -> bool:
        """Uncached decoding that draws random numbers: they are drawn over the whole sequence, as LLaDA and
        Fast-dLLM's uncached `generate` do."""
        sampled = self.temperature > 0 or self.remasking == "random"
        return sampled and self.cache is None

    def logits(self, x: torch.Tensor, inputs: slice, keep: slice, **cache_args) -> tuple[torch.Tensor, Any]:
        """Guided logits of the input columns `inputs` of x, kept at `keep` (relative to `inputs`), and the
        model's cache when asked for one."""
        ids = x[:, inputs]
        if self.cfg_scale > 0:
            ids = torch.cat([ids, x.masked_fill(self.prompt_index, self.mask_id)[:, inputs]])
        logits, out = predicting_logits(self.model, ids, keep, self.attention_mask, **cache_args)
        if self.cfg_scale > 0:
            logits, un_logits = logits.chunk(2)
            logits = un_logits + (self.cfg_scale + 1) * (logits - un_logits)
        if self.forbidden_id is not None:
            logits[:, :, self.forbidden_id] = float("-inf")
        return logits, getattr(out, "cache", None)

    def step_logits(
        self, x: torch.Tensor, step: int, start: int, end: int, cache: Any
    ) -> tuple[torch.Tensor, slice, Any]:
        """Logits of this step over the window of x they cover (from the first masked column to the block's
        end), and the block's cache. Exact decoding and the first step of a cached block run the full
        sequence; later cached steps run only the current block (dual) or the block and the masked suffix
        after it (prefix), like Fast-dLLM. A shifted model (Dream) reads the block's predictions one column to
        the left, so its cached steps also feed that column."""
        lead = int(logits_are_shifted(self.model))
        if step == 0 or self.cache is None:
            masked_columns = (x[:, :end] == self.mask_id).any(dim=0)
            first = int(torch.where(masked_columns.any(), masked_columns.int().argmax(), end))  # one host sync
            window = slice(first, end)
            cache_args = {"use_cache": True} if self.cache is not None else {}
            logits, cache = self.logits(x, slice(None), window, **cache_args)
            if self.cache == "prefix":
                cache = tuple((k[:, :, : start - lead], v[:, :, : start - lead]) for k, v in cache)
            return logits, window, cache
        block = slice(lead, lead + end - start)
        if self.cache == "prefix":
            logits, _ = self.logits(x, slice(start - lead, None), block, cache=cache)
        else:
            slots = slice(start - lead, end)  # a slice: the model reads no slot from the device
            logits, _ = self.logits(x, slots, block, cache=cache, cache_position=slots)
        return logits, slice(start, end), cache

    def step_limit(self, steps: int, block_length: int) -> int:
        """Forward passes a block may take: LLaDA's `steps` per block; for parallel unmasking the cap, else
        the block's length (equal on every process; a block whose steps all commit a token needs no more)."""
        if self.unmask == "schedule":
            return steps
        return block_length if self.max_block_steps is None else self.max_block_steps

    def block_done(self, x: torch.Tensor, bounds: tuple[int, int], step: int, needed: int) -> bool:
        """Whether decoding the block x[:, start:end] (`bounds`) is over before `step`: after the `needed`
        steps that can commit a token (schedule: known from the block's masks, no host sync a step);
        parallel unmasking once no mask is left in the block (Fast-dLLM's stopping rule: one host sync a step
        after the first)."""
        if step >= needed:
            return True
        if self.unmask == "schedule" or step == 0:
            return False
        return not (x[:, bounds[0] : bounds[1]] == self.mask_id).any()

    def needed_steps(self, most: int, limit: int) -> int:
        """Steps of a block whose rows have at most `most` masks that can commit a token: LLaDA's schedule
        commits min(masks, steps) steps' worth (later steps commit none and are skipped) unless random
        numbers are drawn (then all `steps`, LLaDA's draws); parallel unmasking up to its `limit`."""
        if self.unmask == "schedule" and not self.exact_rng:
            return min(most, limit)
        return limit

    def decode_block(
        self, x: torch.Tensor, start: int, end: int, steps: int, block: int, finished: bool = False
    ) -> None:
        """Unmask x[:, start:end] (block number `block`) in place: LLaDA's schedule in exactly `steps` steps;
        parallel unmasking until the block is done (at most `max_block_steps` steps when set). `finished`
        (early stop): nothing left to decode. With `sync_done`, a process with nothing left runs
        `join_forward` until every process is done. Each step is recorded in `trace` when there is one."""
        masked = x[:, start:end] == self.mask_id
        most = int(masked.sum(dim=1).max())  # one host sync a block
        prefilled = most == 0  # every position fixed by `prefill`: skipped, as IGPO does
        limit = self.step_limit(steps, end - start)
        schedule = num_transfer_tokens(masked, limit)  # read by unmask="schedule" only (limit = steps)
        needed = self.needed_steps(most, limit)
        cache = None
        passes = 0
        for step in range(limit):
            idle = finished or prefilled or self.block_done(x, (start, end), step, needed)
            if self.all_done(idle):
                break
            passes += 1
            if idle:
                self.join_forward(x)
                if self.trace is not None:
                    self.trace.record(block, 0)
                continue
            self.steps += 1
            cache = self.denoise(x, step, limit, (start, end), schedule[:, step], cache, block)
        self.passes += passes
        self.block_passes.append(passes)

    def denoise(
        self,
        x: torch.Tensor,
        step: int,
        limit: int,
        bounds: tuple[int, int],
        scheduled: torch.Tensor,
        cache: Any,
        block: int,
    ) -> Any:
        """One denoising step of the block x[:, start:end] (`bounds`), in place: LLaDA commits `scheduled`
        [B] tokens, parallel unmasking what its rule picks (plus, under `max_block_steps`, enough to finish
        within the `limit`). Returns the block's cache."""
        start, end = bounds
        logits, window, cache = self.step_logits(x, step, start, end, cache)
        positions = torch.arange(window.start, window.stop, device=x.device)
        candidates = (x[:, window] == self.mask_id) & (positions < end)
        x0, confidence = predict_tokens(
            logits,
            candidates,
            temperature=self.temperature,
            remasking=self.remasking,
            generator=self.generator,
            suppress_ids=self.suppress_ids,
            stream=(window.start, x.shape[1]) if self.exact_rng else None,
        )
        k = scheduled
        if self.unmask != "schedule":
            k = parallel_unmask_count(confidence, candidates, self.unmask, self.threshold, self.factor)
            if self.max_block_steps is not None:
                steps_left = limit - step
                k = torch.maximum(k, (candidates.sum(dim=-1) + steps_left - 1) // steps_left)
        transfer = select_transfer(confidence, candidates, k)
        x[:, window] = torch.where(transfer, x0, x[:, window])
        if self.trace is not None:
            self.trace.record(block, window.start - self.gen_start, transfer, x0, logits)
        return cache


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 64,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    mask_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    eos_token_id: int | None = None,
    eot_token_id: int | None = None,
    cache: str | None = None,
    unmask: str = "schedule",
    threshold: float = 0.9,
    factor: float = 1.0,
    max_block_steps: int | None = None,
    early_stop: bool = False,
    stats: dict | None = None,
    sync_done: Callable[[bool], bool] | None = None,
    trace: Trace | None = None,
    prefill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prompt plus `gen_length` generated tokens [B, P + gen_length], decoded in blocks of `block_length`
    with `steps` model calls in total (LLaDA's `generate`).

    `attention_mask` [B, P] marks left padding (1 real, 0 pad). `logits_eos_inf` forbids EOS;
    `confidence_eos_eot_inf` commits EOS/EoT predictions last. Fast-dLLM's approximations:
    `cache` "prefix" | "dual" (block KV cache, needs a model taking `cache`); `unmask` "threshold" |
    "factor" (parallel unmasking as Fast-dLLM's `get_transfer_index` / `get_transfer_index_dynamic`: each
    step commits the most confident token and the others its rule accepts, until the block is done; `steps`
    then only has to be a multiple of the number of blocks, as in Fast-dLLM) or "factor_strict" (the longest
    run of the n most confident whose n-th reaches 1 - factor / (n + 1), without Fast-dLLM's exception that
    commits every candidate when only the last fails); `max_block_steps` (parallel unmasking only) caps the
    forward passes of a block, each step then committing at least ceil(block's masks left / steps left);
    `early_stop` (stop once every row's decoded blocks end in EOS, filling the rest with EOS).
    `stats`, when given, receives "forward_passes" (model calls, the passes of a finished process that only
    keep `sync_done` processes in step included), "steps" (the denoising steps among them) and
    "block_passes" (forward passes per decoded block). `trace`, when given (a `d1.diffusion.trace.Trace`), is
    filled with what each step decided, per row: the positions, tokens and their probabilities (the return
    value stays the token tensor).

    `prefill` [B, gen_length] fixes completion tokens in place (`mask_token_id` where free; IGPO's
    inpainting): they are never masked or changed, each block's schedule counts only its free positions
    (LLaDA's `get_num_transfer_tokens` on the masked ones), a block with none is skipped without a forward
    pass, and guidance masks them with the prompt in the unconditional input (as IGPO does).

    `sync_done(done) -> every process done` (e.g. an all-reduce) makes the data-dependent step counts of
    threshold/factor unmasking and early stop equal on all processes, as sharded weights (ZeRO-3, FSDP)
    need: a process that finished runs forward passes that change nothing until every process has finished.
    Each process's tokens are those it would decode alone.

    On a block-diffusion model (`config.block_diffusion`: LLaDA 2.x, SDAR) this runs the family's own sampler,
    `d1.diffusion.block_diffusion.generate_blocks`, with `steps / (gen_length / block_length)` steps a block;
    the options only LLaDA's sampler reads are refused.
    """
    if is_block_diffusion(model):
        unread = {
            "remasking": (remasking, "low_confidence"), "cfg_scale": (cfg_scale, 0.0), "cache": (cache, None),
            "logits_eos_inf": (logits_eos_inf, False), "confidence_eos_eot_inf": (confidence_eos_eot_inf, False),
            "max_block_steps": (max_block_steps, None), "sync_done": (sync_done, None), "prefill": (prefill, None),
        }  # fmt: skip
        refused = [name for name, (value, default) in unread.items() if value is not default and value != default]
        if refused or unmask not in ("schedule", "threshold"):
            raise ValueError(
                f"{refused or ['unmask=' + repr(unmask)]}: a block-diffusion model (LLaDA 2.x, SDAR) decodes with "
                "its own sampler (d1.diffusion.block_diffusion), which does not read these; drop them "
                "(its finished-block cache is always on and exact; unmask is schedule or threshold)."
            )
        check_block_schedule(gen_length, block_length, steps)
        settings = BlockDiffusionSampling(
            gen_length=gen_length, block_length=block_length, steps=BlockDiffusionSampling.steps_per_block(gen_length, block_length, steps),
            temperature=temperature, threshold=threshold if unmask == "threshold" else None,
        )  # fmt: skip
        return generate_blocks(
            model, prompt_ids, settings, mask_token_id=resolve_token_id(model, mask_token_id, "mask_token_id"),
            eos_token_id=resolve_token_id(model, eos_token_id, "eos_token_id"), attention_mask=attention_mask,
            generator=generator, trace=trace, stats=stats,
        )  # fmt: skip
    check_prompt(prompt_ids, attention_mask)
    check_settings(
        gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
        remasking=remasking, cfg_scale=cfg_scale, cache=cache, unmask=unmask, threshold=threshold, factor=factor,
        max_block_steps=max_block_steps,
    )  # fmt: skip
    _check_prefill(prefill, prompt_ids.shape[0], gen_length, early_stop)
    if cache is not None and not _accepts(model, "cache"):
        raise ValueError(f"cache={cache!r} needs a model whose forward takes `cache` (d1's native LLaDA).")
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    suppress_ids: tuple[int, ...] = ()
    eos_id = None
    if logits_eos_inf or confidence_eos_eot_inf or early_stop:
        eos_id = resolve_token_id(model, eos_token_id, "eos_token_id")
        if confidence_eos_eot_inf:
            suppress_ids = (eos_id,) if eot_token_id is None else (eos_id, eot_token_id)

    b, prompt_length = prompt_ids.shape
    x = torch.full((b, prompt_length + gen_length), mask_id, dtype=torch.long, device=prompt_ids.device)
    x[:, :prompt_length] = prompt_ids
    if prefill is not None:
        x[:, prompt_length:] = prefill
    prompt_index = x != mask_id  # padding and prefilled tokens too, as in LLaDA and IGPO
    if attention_mask is not None:
        ones = attention_mask.new_ones(b, gen_length)
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        if cfg_scale > 0:
            attention_mask = torch.cat([attention_mask, attention_mask])
    decoder = _Decoder(
        model,
        mask_id,
        attention_mask,
        prompt_index,
        cfg_scale,
        eos_id if logits_eos_inf else None,
        temperature,
        remasking,
        generator,
        suppress_ids,
        cache,
        unmask,
        threshold,
        factor,
        max_block_steps,
        sync_done,
        trace,
        prompt_length,
    )
    if trace is not None:
        trace.start(b, gen_length, block_length)

    num_blocks = gen_length // block_length
    finished = False
    for block in range(num_blocks):
        end = prompt_length + (block + 1) * block_length
        start = end - block_length
        decoder.decode_block(x, start, end, steps // num_blocks, block, finished)
        if early_stop:
            rows_done = x[:, end - 1] == eos_id
            if trace is not None:
                trace.fill(rows_done[:, None] & (x[:, end:] == mask_id), end - prompt_length, eos_id)
            x[rows_done, end:] = eos_id
            finished = bool(rows_done.all())
            if decoder.all_done(finished):
                break
    if stats is not None:
        stats.update(forward_passes=decoder.passes, steps=decoder.steps, block_passes=decoder.block_passes)
    return x
