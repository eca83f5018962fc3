"""IGPO's inpainting pieces: zero-signal groups, hint fractions, the hint canvas and the row replacement."""

from __future__ import annotations

import pytest
import torch

from d1.rl.inpaint import (
    FREE_TAIL,
    MAX_SPACING,
    _chunks,
    _placed,
    _revealed,
    hint_canvas,
    hint_fractions,
    replace_rows,
    zero_signal_groups,
)

MASK = 99


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_signal_groups_are_those_with_one_reward():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.5, 2.5, 2.5, 2.5, 1.0, float("nan"), 1, 1])
    assert zero_signal_groups(rewards, 4).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="16 rows must be whole groups of num_generations=3"):
        zero_signal_groups(rewards, 3)


def test_hint_fractions_are_sorted_draws_in_range_per_group():
    fractions = hint_fractions(12, 4, 0.2, 0.6, seeded(1))
    groups = fractions.view(3, 4)
    assert ((fractions >= 0.2) & (fractions < 0.6)).all()
    assert torch.equal(groups, groups.sort(dim=1).values) and len(set(fractions.tolist())) == 12
    assert torch.equal(fractions, hint_fractions(12, 4, 0.2, 0.6, seeded(1)))
    with pytest.raises(ValueError, match="low=0.7, high=0.6"):
        hint_fractions(12, 4, 0.7, 0.6, seeded(1))


def test_chunks_tile_the_reference_and_drop_a_short_tail():
    assert _chunks(12, 5, 5, seeded()) == [(0, 5), (5, 10)]
    chunks = _chunks(200, 5, 10, seeded(2))
    sizes = [end - start for start, end in chunks]
    assert chunks[0][0] == 0 and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(5 <= s <= 10 for s in sizes) and 200 - chunks[-1][1] < 5 and len(set(sizes)) > 3


def test_revealed_hides_the_fraction_but_always_shows_the_last_chunk():
    chunks = [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert _revealed(chunks, 1.0, seeded()) == chunks
    assert _revealed(chunks, 0.0, seeded()) == [(15, 20)]
    counts = set()
    for seed in range(20):
        shown = _revealed(chunks, 0.5, seeded(seed))  # int(4 * 0.5) = 2 hidden: 3 shown if the last was one
        assert shown[-1] == (15, 20) and shown == sorted(set(shown) & set(chunks))
        counts.add(len(shown))
    assert counts == {2, 3}


def test_placed_stretches_gaps_caps_them_and_cuts_at_the_area_end():
    chunks = [(0, 5), (10, 15), (15, 20)]
    # first at 0; gap 5 * 1.5 = 7.5 -> 7, so 5 + 7 = 12; gap 0 -> 17
    assert _placed(chunks, 1.5, 30) == [(0, 0, 5), (10, 12, 5), (15, 17, 5)]
    assert _placed(chunks, 1.5, 20) == [(0, 0, 5), (10, 12, 5), (15, 17, 3)]
    assert _placed([(4, 6)], 1.5, 30) == [(4, 6, 2)]
    assert _placed([(0, 2), (200, 203)], 1.0, 300) == [(0, 0, 2), (200, 2 + MAX_SPACING, 3)]
    assert _placed([(0, 2), (40, 43)], 1.5, 50) == [(0, 0, 2)]  # 2 + 57 is past the area: dropped


def test_hint_canvas_reveals_whole_reference_chunks_in_order_and_keeps_the_tail_free():
    reference = [list(range(40)), list(range(100, 120))]
    canvas = hint_canvas(reference, 64, MASK, [0.5, 1.0], [seeded(3), seeded(4)], min_chunk_size=5, max_chunk_size=5)
    assert canvas.shape == (2, 64) and (canvas[:, 64 - FREE_TAIL :] == MASK).all()
    # row 1: the 20-token reference in a 34-token area, stretch 1.5, no gaps: it stays a prefix
    assert canvas[1, :20].tolist() == reference[1] and (canvas[1, 20:] == MASK).all()
    # row 0: 34 of 40 tokens fit (6 chunks); int(6 * 0.5) = 3 hidden, the last one always shown
    shown = canvas[0][canvas[0] != MASK].tolist()
    runs = [shown[i : i + 5] for i in range(0, len(shown), 5)]
    assert len(shown) in (15, 20) and runs[-1] == list(range(25, 30))
    assert all(run == list(range(run[0], run[0] + 5)) and run[0] % 5 == 0 for run in runs)
    assert shown == sorted(shown)
    again = hint_canvas(reference, 64, MASK, [0.5, 1.0], [seeded(3), seeded(4)], min_chunk_size=5, max_chunk_size=5)
    assert torch.equal(canvas, again)


def test_hint_canvas_without_a_fraction_or_room_reveals_nothing():
    assert (hint_canvas([list(range(50))], 64, MASK, 0.0, [seeded()]) == MASK).all()
    assert (hint_canvas([list(range(50))], FREE_TAIL, MASK, 0.8, [seeded()]) == MASK).all()
    assert (hint_canvas([[]], 64, MASK, 0.8, [seeded()]) == MASK).all()
    with pytest.raises(ValueError, match="must lie in"):
        hint_canvas([[1, 2]], 64, MASK, 1.5, [seeded()])


def test_hint_canvas_free_tail_scales_to_short_completions():
    # the demo's 28-token Sudoku completions: IGPO's 30-token free tail leaves no room, a tail of 4 does
    reference = list(range(24))
    assert (hint_canvas([reference], 28, MASK, 1.0, [seeded()]) == MASK).all()
    canvas = hint_canvas([reference], 28, MASK, 1.0, [seeded()], min_chunk_size=3, max_chunk_size=3, free_tail=4)
    assert canvas[0, :24].tolist() == reference and (canvas[0, 24:] == MASK).all()


def test_replace_rows_puts_correct_hinted_rows_first_in_zero_signal_groups_only():
    zero_signal = torch.tensor([True, False, True])
    correct = torch.tensor([0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    source = replace_rows(zero_signal, correct, 4, seeded())
    assert source.tolist() == [1, 3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]
    picks = {tuple(replace_rows(zero_signal, correct, 1, seeded(s))[:2].tolist()) for s in range(20)}
    assert picks == {(1, -1), (3, -1)}
    assert (replace_rows(zero_signal, correct, 0, seeded()) == -1).all()
