"""LLaDA's reverse process: semi-autoregressive, block-by-block unmasking of a fully masked completion.

Reproduces `generate` from LLaDA's `generate.py` (low-confidence or random remasking, Gumbel-max sampling in
float64, optional classifier-free guidance and EOS/EoT suppression), batched. Randomness comes from
`generator`, else torch's global RNG, drawn in LLaDA's order and shapes (same seed, same samples).
Each step is "logits -> (x0, confidence) -> transfer mask"; those pieces are separate functions so other
decoding schedules can reuse them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REMASKING = ("low_confidence", "random")


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


def add_gumbel_noise(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Scores whose argmax samples softmax(logits / temperature): exp(logits) / (-log u)^temperature in float64
    (LLaDA found low-precision Gumbel noise hurts quality). Temperature 0 returns `logits` (greedy)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    device = generator.device if generator is not None else logits.device
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=device).to(
        logits.device
    )
    return logits.exp() / (-torch.log(noise)) ** temperature


def predict_tokens(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    *,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
    suppress_ids: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted tokens x0 [B, L] and their confidence [B, L] (-inf outside `candidates`).

    low_confidence: confidence = softmax probability of x0, in float64 like LLaDA (only candidate rows are
    converted). random: uniform draws. Predictions in `suppress_ids` get -inf confidence (committed last).
    """
    x0 = add_gumbel_noise(logits, temperature, generator).argmax(dim=-1)
    if remasking == "low_confidence":
        probs = F.softmax(logits[candidates].to(torch.float64), dim=-1)
        chosen = probs.gather(-1, x0[candidates].unsqueeze(-1)).squeeze(-1)
        confidence = torch.full(x0.shape, float("-inf"), dtype=torch.float64, device=x0.device)
        confidence[candidates] = chosen
    else:
        device = generator.device if generator is not None else x0.device
        confidence = torch.rand(x0.shape, generator=generator, device=device).to(x0.device)
        confidence = confidence.masked_fill(~candidates, float("-inf"))
    if suppress_ids:
        confidence = confidence.masked_fill(
            torch.isin(x0, torch.tensor(suppress_ids, device=x0.device)), float("-inf")
        )
    return x0, confidence


def select_transfer(confidence: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: the k[b] most confident candidates of each row, batched (one topk with max k).

    Candidates with -inf confidence rank below every other candidate but above every non-candidate.
    """
    lowest = torch.finfo(confidence.dtype).min
    key = torch.where(candidates, confidence.clamp(min=lowest), float("-inf"))
    top = key.topk(int(k.max()), dim=-1).indices
    keep = torch.arange(top.shape[1], device=k.device) < k[:, None]
    return torch.zeros_like(candidates).scatter(-1, top, keep) & candidates


def _validate(
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float,
    remasking: str,
    cfg_scale: float,
) -> None:
    """Reject bad settings before any forward pass, saying which values would work."""
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [batch, prompt_length], got shape {tuple(prompt_ids.shape)}.")
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal prompt_ids shape {tuple(prompt_ids.shape)}."
        )
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise ValueError(
            f"gen_length={gen_length}, block_length={block_length}, steps={steps} must all be positive."
        )
    if gen_length % block_length:
        divisors = [d for d in range(1, gen_length + 1) if gen_length % d == 0]
        raise ValueError(
            f"gen_length={gen_length} must be a multiple of block_length={block_length}; "
            f"block lengths that divide it: {divisors}."
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        lower, upper = steps // num_blocks * num_blocks, (steps // num_blocks + 1) * num_blocks
        nearby = [s for s in (lower, upper) if s > 0]
        raise ValueError(
            f"steps={steps} must be a multiple of the number of blocks {num_blocks} (gen_length={gen_length} / "
            f"block_length={block_length}); e.g. steps={' or '.join(map(str, nearby))}."
        )
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r} is not one of {REMASKING}.")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy).")
    if not cfg_scale >= 0:
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 = no classifier-free guidance).")


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
    stats: dict | None = None,
) -> torch.Tensor:
    """Prompt plus `gen_length` generated tokens [B, P + gen_length], decoded in blocks of `block_length`
    with `steps` model calls in total (LLaDA's `generate`).

    `attention_mask` [B, P] marks left padding (1 real, 0 pad). `logits_eos_inf` forbids EOS;
    `confidence_eos_eot_inf` commits EOS/EoT predictions last. `stats`, when given, receives
    "forward_passes" and "steps".
    """
    _validate(prompt_ids, attention_mask, gen_length, block_length, steps, temperature, remasking, cfg_scale)
    mask_id = resolve_token_id(model, mask_token_id, "mask_token_id")
    suppress_ids: tuple[int, ...] = ()
    if logits_eos_inf or confidence_eos_eot_inf:
        eos_id = resolve_token_id(model, eos_token_id, "eos_token_id")
        if confidence_eos_eot_inf:
            suppress_ids = (eos_id,) if eot_token_id is None else (eos_id, eot_token_id)

    b, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    x = torch.full((b, prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt_ids
    prompt_index = x != mask_id  # padding too, as in LLaDA; the attention mask hides it either way
    if attention_mask is not None:
        ones = attention_mask.new_ones(b, gen_length)
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        if cfg_scale > 0:
            attention_mask = torch.cat([attention_mask, attention_mask])

    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    positions = torch.arange(x.shape[1], device=device)
    forward_passes = 0
    for block in range(num_blocks):
        block_end = prompt_length + (block + 1) * block_length
        block_masked = x[:, block_end - block_length : block_end] == mask_id
        schedule = num_transfer_tokens(block_masked, steps_per_block)
        for step in range(steps_per_block):
            if cfg_scale > 0:
                unconditional = x.masked_fill(prompt_index, mask_id)
                logits, un_logits = model(
                    torch.cat([x, unconditional]), attention_mask=attention_mask
                ).logits.chunk(2)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            forward_passes += 1
            if logits_eos_inf:
                logits[:, :, eos_id] = float("-inf")
            candidates = (x == mask_id) & (positions < block_end)
            x0, confidence = predict_tokens(
                logits,
                candidates,
                temperature=temperature,
                remasking=remasking,
                generator=generator,
                suppress_ids=suppress_ids,
            )
            transfer = select_transfer(confidence, candidates, schedule[:, step])
            x = torch.where(transfer, x0, x)
    if stats is not None:
        stats.update(forward_passes=forward_passes, steps=num_blocks * steps_per_block)
    return x
