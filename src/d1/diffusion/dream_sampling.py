"""Dream's reverse process (`diffusion_generate`): the whole completion denoised at once, no blocks.

Time runs over `linspace(1, eps, steps + 1)`; at step i (from t to s) the `origin` rule unmasks each masked
position with probability 1 - s/t in random order, and the confidence rules unmask the
`int(n_masked * (1 - s/t))` most confident positions (all that remain at the last step), where n_masked is the
batch's mean count of mask tokens: `maskgit_plus` (top probability), `topk_margin` (top-1 minus top-2
probability), `entropy` (negative entropy). `alg_temp` > 0 samples the positions from softmax(confidence /
alg_temp) instead. Tokens come from softmax(logits / temperature) after optional top-p / top-k truncation
(argmax at temperature 0). The logits are realigned for shifted models (`d1.diffusion.logits`).
The public API (arguments, hooks, `.sequences` and `.history`) is Dream's own, so its user code runs unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from d1.diffusion.logits import predicting_logits, truncate_logits
from d1.diffusion.sampling import resolve_token_id
from d1.diffusion.trace import Trace

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
DEFAULT_NEW_TOKENS = 20
"""New tokens when neither `max_new_tokens` nor `max_length` is given (Dream's default `max_length` of 20)."""

TokensHook = Callable[[int | None, torch.Tensor, torch.Tensor | None], torch.Tensor]
LogitsHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DreamSampling:
    """Dream's generation settings (the fields of its `DreamGenerationConfig`), with Dream's defaults."""

    max_new_tokens: int | None = None
    max_length: int | None = None
    steps: int = 512
    eps: float = 1e-3
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg: str = "origin"
    alg_temp: float | None = None
    mask_token_id: int | None = None
    output_history: bool = False
    return_dict_in_generate: bool = False
    num_return_sequences: int = 1

    def validate(self) -> None:
        """Reject bad settings before any forward pass, saying which values work."""
        if self.alg not in ALGS:
            raise ValueError(f"alg={self.alg!r} is unknown; use one of {ALGS}.")
        if self.steps <= 0:
            raise ValueError(f"steps={self.steps} must be positive.")
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = argmax).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (None = no truncation).")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"top_k={self.top_k} must be a positive integer (None = no truncation).")
        if self.alg_temp is not None and not self.alg_temp >= 0:
            raise ValueError(f"alg_temp={self.alg_temp} must be >= 0 (0 or None = the most confident first).")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps={self.eps} must be in (0, 1).")


@dataclass
class DreamGenerationOutput(ModelOutput):
    """Dream's generation output: the final sequences and, with `output_history`, x after every step."""

    sequences: torch.Tensor | None = None
    history: tuple[torch.Tensor, ...] | None = None


def settings_from(generation_config: Any, kwargs: dict[str, Any]) -> DreamSampling:
    """Dream's settings: the defaults, overridden by `generation_config`'s fields, then by `kwargs`."""
    names = {f.name for f in dataclasses.fields(DreamSampling)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(
            f"diffusion_generate got unknown arguments {unknown}; known settings: {sorted(names)}."
        )
    values = {
        n: getattr(generation_config, n) for n in names if getattr(generation_config, n, None) is not None
    }
    settings = DreamSampling(**{**values, **kwargs})
    settings.validate()
    return settings


def sample_tokens(
    logits: torch.Tensor, settings: DreamSampling, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, token) for each row of `logits` [N, V] under `settings.alg`'s confidence rule."""
    if settings.temperature > 0:
        logits = logits / settings.temperature
    probs = F.softmax(truncate_logits(logits, settings.top_p, settings.top_k), dim=-1)
    if settings.temperature > 0 and len(probs):
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        confidence, tokens = probs.max(dim=-1)
    if settings.alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif settings.alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, tokens


def _padding(
    attention_mask: torch.Tensor | None, length: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Dream's mask and positions for left-padded prompts: a 4-D boolean mask (query and key both real) and
    positions cumsum - 1 (pads at 1); (None, None) when nothing is padded."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None, None
    real = F.pad(attention_mask.bool(), (0, length - attention_mask.shape[1]), value=True)
    positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
    return real[:, None, :, None] & real[:, None, None, :], positions


def _unmask_step(
    x: torch.Tensor,
    logits: torch.Tensor,
    mask_id: int,
    ratio: torch.Tensor,
    last: bool,
    settings: DreamSampling,
    generator: torch.Generator | None,
) -> None:
    """One denoising step in place: from time t to s, `ratio` = 1 - s/t of the masked positions unmasked."""
    masked = x == mask_id
    masked_logits = logits[masked]
    if settings.alg == "origin":
        chosen = torch.rand(masked_logits.shape[0], device=x.device, generator=generator) < (
            1 if last else ratio
        )
        proposal = torch.full_like(x[masked], mask_id)
        proposal[chosen] = sample_tokens(masked_logits[chosen], settings, generator)[1]
        x[masked] = proposal
        return
    confidence, tokens = sample_tokens(masked_logits, settings, generator)
    mean_masked = masked.sum() / masked.shape[0]
    count = int(mean_masked) if last else int(mean_masked * ratio)
    if count <= 0:
        return
    scores = torch.full(x.shape, -torch.inf, dtype=logits.dtype, device=x.device)
    scores[masked] = confidence.to(logits.dtype)
    if settings.alg_temp:
        weights = F.softmax(scores / settings.alg_temp, dim=-1)
        positions = torch.multinomial(weights, count, generator=generator)
    else:
        positions = torch.topk(scores, count).indices
    proposal = torch.full_like(x, mask_id)
    proposal[masked] = tokens
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    x[rows, positions] = proposal[rows, positions]


@torch.no_grad()
def diffusion_generate(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    generation_config: Any = None,
    *,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_tokens_hook_func: TokensHook | None = None,
    generation_logits_hook_func: LogitsHook | None = None,
    generator: torch.Generator | None = None,
    trace: Trace | None = None,
    **kwargs: Any,
) -> DreamGenerationOutput | torch.Tensor:
    """Dream's `model.diffusion_generate`: the prompt [B, P] (`inputs` or `input_ids`, left-padded with
    `attention_mask`) followed by `max_new_tokens` generated tokens (else `max_length` in total, else 20 new).

    Settings (`DreamSampling`) come from kwargs, else `generation_config`, else Dream's defaults.
    `generation_tokens_hook_func(step, x, logits) -> x` runs before the first step (step None) and after each;
    `generation_logits_hook_func(step, x, logits) -> logits` sees the realigned logits [B, L, V] of each step.
    Returns the sequences, or with `return_dict_in_generate` a `DreamGenerationOutput` (`.sequences`, and
    `.history`: x after every step when `output_history`). Randomness comes from `generator`, else torch's.
    `trace` (a `d1.diffusion.trace.Trace`, one block the length of the completion) is filled with the positions
    each step unmasked, their tokens and probabilities.
    """
    settings = settings_from(generation_config, kwargs)
    prompt = inputs if inputs is not None else input_ids
    if prompt is None or prompt.dim() != 2:
        raise ValueError(
            "diffusion_generate needs the prompt token ids [batch, length] as `inputs`/`input_ids`."
        )
    if attention_mask is not None and attention_mask.shape != prompt.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal the prompt's {tuple(prompt.shape)}."
        )
    new_tokens = settings.max_new_tokens
    if new_tokens is None:
        new_tokens = (
            DEFAULT_NEW_TOKENS if settings.max_length is None else settings.max_length - prompt.shape[1]
        )
    if new_tokens <= 0:
        raise ValueError(
            f"max_new_tokens={new_tokens} (max_length={settings.max_length}, prompt length {prompt.shape[1]}) "
            "must be positive: raise max_new_tokens."
        )
    mask_id = resolve_token_id(model, settings.mask_token_id, "mask_token_id")
    if settings.num_return_sequences > 1:
        prompt = prompt.repeat_interleave(settings.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(settings.num_return_sequences, dim=0)
    x = F.pad(prompt, (0, new_tokens), value=mask_id)
    mask, positions = _padding(attention_mask, x.shape[1])
    tokens_hook = generation_tokens_hook_func or (lambda step, x, logits: x)
    logits_hook = generation_logits_hook_func or (lambda step, x, logits: logits)
    times = torch.linspace(1, settings.eps, settings.steps + 1, device=x.device)
    history = []
    start = prompt.shape[1]
    if trace is not None:
        trace.start(x.shape[0], new_tokens, new_tokens)
    x = tokens_hook(None, x, None)
    for step in range(settings.steps):
        logits, _ = predicting_logits(model, x, slice(0, None), attention_mask=mask, position_ids=positions)
        logits = logits_hook(step, x, logits)
        ratio = 1 - times[step + 1] / times[step]
        masked = x[:, start:] == mask_id
        _unmask_step(x, logits, mask_id, ratio, step == settings.steps - 1, settings, generator)
        if trace is not None:
            trace.record(0, 0, masked & (x[:, start:] != mask_id), x[:, start:], logits[:, start:])
        x = tokens_hook(step, x, logits)
        if settings.output_history:
            history.append(x.clone())
    if not settings.return_dict_in_generate:
        return x
    return DreamGenerationOutput(sequences=x, history=tuple(history) if settings.output_history else None)
