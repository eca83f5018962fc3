"""IGPO's inpainting of zero-signal groups (arXiv 2509.10396, facebookresearch/igpo), as pure functions.

When every completion of a group gets the same reward, the group's advantages are all 0. IGPO re-generates
the group with chunks of the reference solution fixed in place (`hint_canvas` -> `generate(prefill=...)`),
one revealed fraction per row (`hint_fractions`), and swaps up to `max_replacements` of the hinted
completions that are correct into the group (`replace_rows`). Published settings (run_igpo.sh): chunks of
5-10 tokens, fractions in [0.2, 0.6], max_replacements 4. All randomness comes from an explicit generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FREE_TAIL = 30
"""Completion tokens at the end that are never hinted (IGPO's `gen_length - 30` hint area)."""

MAX_SPACING = 100
"""Largest stretched gap between two revealed chunks (IGPO's `max_spacing`, as its trainer calls it)."""

MAX_STRETCH = 1.5
"""Largest factor by which gaps between revealed chunks are stretched to spread them over the hint area."""


def _check_groups(rows: int, num_generations: int) -> None:
    if num_generations < 1 or rows % num_generations:
        raise ValueError(
            f"{rows} rows must be whole groups of num_generations={num_generations} (a positive divisor)."
        )


def zero_signal_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """bool [N / G]: groups whose G rewards [N] are all equal, so every advantage is 0 (no learning signal).

    IGPO's trainer fires only on all-wrong groups; an all-correct group cannot gain a better hinted row, so
    `replace_rows` leaves it as it is when `correct` is judged against the group's reward."""
    _check_groups(len(rewards), num_generations)
    groups = rewards.view(-1, num_generations)
    return (groups == groups[:, :1]).all(dim=1)


def hint_fractions(
    num_rows: int, num_generations: int, low: float, high: float, generator: torch.Generator
) -> torch.Tensor:
    """Revealed fraction of each row [N]: uniform in [low, high), sorted ascending within each group (IGPO's
    `inpaint_chunk_ratio_low` / `inpaint_chunk_high_initial_ratio`, 0.2 / 0.6 in run_igpo.sh)."""
    _check_groups(num_rows, num_generations)
    if not 0 <= low <= high <= 1:
        raise ValueError(f"hint fractions low={low}, high={high} must satisfy 0 <= low <= high <= 1.")
    draws = torch.rand(num_rows // num_generations, num_generations, generator=generator)
    return (draws * (high - low) + low).sort(dim=1).values.flatten()


def _chunks(length: int, min_size: int, max_size: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Consecutive chunks [start, end) from 0, each of a size drawn in [min_size, max_size]; a tail shorter
    than min_size is left out (IGPO: too short to help)."""
    chunks, start = [], 0
    while start < length:
        size = min(int(torch.randint(min_size, max_size + 1, (1,), generator=generator)), length - start)
        if size < min_size:
            break
        chunks.append((start, start + size))
        start += size
    return chunks


def _revealed(chunks: list[tuple[int, int]], fraction: float, generator: torch.Generator) -> list[tuple[int, int]]:
    """The chunks left visible: int(count * (1 - fraction)) of them hidden at random, the last always shown."""
    hidden = set(torch.randperm(len(chunks), generator=generator)[: int(len(chunks) * (1 - fraction))].tolist())
    return [c for i, c in enumerate(chunks) if i not in hidden or i == len(chunks) - 1]


def _placed(chunks: list[tuple[int, int]], stretch: float, area: int) -> list[tuple[int, int, int]]:
    """(source start, target start, length) of each revealed chunk: the first at its stretched start, each
    later one after the previous with its stretched gap (at most MAX_SPACING), cut at the hint area's end."""
    placed: list[tuple[int, int, int]] = []
    source_end = target_end = 0
    for start, end in chunks:
        if placed:
            target = target_end + min(int((start - source_end) * stretch), MAX_SPACING)
        else:
            target = int(start * stretch)
        length = min(end - start, area - target)
        if length <= 0:
            break
        placed.append((start, target, length))
        source_end, target_end = end, target + length
    return placed


def hint_row(
    reference: Sequence[int],
    gen_length: int,
    mask_token_id: int,
    fraction: float,
    generator: torch.Generator,
    min_chunk_size: int = 5,
    max_chunk_size: int = 10,
    free_tail: int = FREE_TAIL,
) -> torch.Tensor:
    """One row's prefill [gen_length]; see `hint_canvas`."""
    row = torch.full((gen_length,), mask_token_id, dtype=torch.long)
    area = max(0, gen_length - free_tail)
    tokens = list(reference)[:area]
    if fraction <= 0 or not tokens:
        return row
    stretch = min(MAX_STRETCH, max(1.0, area / len(reference)))
    chunks = _revealed(_chunks(len(tokens), min_chunk_size, max_chunk_size, generator), fraction, generator)
    for source, target, length in _placed(chunks, stretch, area):
        row[target : target + length] = torch.tensor(tokens[source : source + length])
    return row


def hint_canvas(
    reference_ids: list[list[int]],
    gen_length: int,
    mask_token_id: int,
    fraction: float | Sequence[float] | torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    min_chunk_size: int = 5,
    max_chunk_size: int = 10,
    free_tail: int = FREE_TAIL,
) -> torch.Tensor:
    """Prefill [N, gen_length] for `generate(prefill=...)`: chunks of each row's reference tokens fixed in
    place, `mask_token_id` elsewhere; row i draws from `generators[i]` (so a row's hints do not depend on which
    process holds it).

    Follows IGPO's code (`create_spacing_scaled_inpainting_sequence`): the reference, cut to the hint area
    (all but the last `free_tail` positions; IGPO: 30 of 256), is split from its start into chunks of
    min..max_chunk_size tokens; int(chunks * (1 - fraction)) of them are hidden at random, but the last chunk
    is always revealed (its `inpaint_last_chunk_end` default, which the trainer never overrides). The revealed
    chunks are not kept at their own positions: they keep their order, the first starts at its index times the
    stretch factor area / len(reference) (clamped to [1, 1.5]) and each gap is stretched likewise (at most
    MAX_SPACING), so hints can sit anywhere in the area, not only in a prefix. `fraction`: one for all rows or
    one per row (`hint_fractions`); 0 reveals nothing (IGPO then generates without hints).
    """
    fractions = torch.as_tensor(fraction, dtype=torch.float64).expand(len(reference_ids)).tolist()
    if not all(0 <= f <= 1 for f in fractions):
        raise ValueError(f"fraction={fraction} must lie in [0, 1] (the share of reference chunks revealed).")
    if not 1 <= min_chunk_size <= max_chunk_size:
        raise ValueError(
            f"min_chunk_size={min_chunk_size}, max_chunk_size={max_chunk_size} must satisfy 1 <= min <= max."
        )
    rows = [
        hint_row(ids, gen_length, mask_token_id, f, g, min_chunk_size, max_chunk_size, free_tail)
        for ids, f, g in zip(reference_ids, fractions, generators, strict=True)
    ]
    return torch.stack(rows) if rows else torch.empty(0, gen_length, dtype=torch.long)


def replace_rows(
    zero_signal: torch.Tensor, correct: torch.Tensor, max_replacements: int, generator: torch.Generator
) -> torch.Tensor:
    """Long [N]: the hinted row that takes each row's place, -1 to keep the original.

    In each zero-signal group (bool [N / G]) the hinted rows that are `correct` (bool [N]; IGPO: the
    correctness reward at its maximum) are candidates; min(candidates, max_replacements) of them (a random
    subset when there are more, else all in order) replace the group's first rows, as IGPO's trainer does
    (run_igpo.sh: max_replacements 4). Other groups keep every row."""
    num_generations = len(correct) // max(len(zero_signal), 1)
    _check_groups(len(correct), num_generations)
    if max_replacements < 0:
        raise ValueError(f"max_replacements={max_replacements} must be >= 0.")
    source = torch.full((len(correct),), -1, dtype=torch.long)
    for group in zero_signal.nonzero().flatten().tolist():
        first = group * num_generations
        candidates = correct[first : first + num_generations].nonzero().flatten()
        if len(candidates) > max_replacements:
            candidates = candidates[torch.randperm(len(candidates), generator=generator)[:max_replacements]]
        source[first : first + len(candidates)] = first + candidates
    return source
