"""Block diffusion decoding (LLaDA 2.x, SDAR): the commit rule and the batched grid by hand, the official
samplers' tokens from their fixtures, and the cache and batching invariants."""

from __future__ import annotations

import pytest
import torch

from d1.diffusion.block_diffusion import BlockDiffusionSampling, _canvas, _commit, generate_blocks

INF = float("-inf")


@pytest.mark.parametrize(
    ("confidence", "masked", "quota", "threshold", "expected"),
    [
        # two above 0.95 >= quota 1: both, however many the quota asks
        ([0.97, 0.2, 0.96, 0.5], [1, 1, 1, 1], 1, 0.95, [1, 0, 1, 0]),
        # two above 0.95 < quota 3: the three most confident instead
        ([0.97, 0.2, 0.96, 0.5], [1, 1, 1, 1], 3, 0.95, [1, 0, 1, 1]),
        # strictly above: 0.95 itself does not pass
        ([0.95, 0.2, 0.96, 0.5], [1, 1, 1, 1], 2, 0.95, [1, 0, 1, 0]),
        # an unmasked position is never committed, and the quota shrinks to the masks left
        ([0.99, 0.2, 0.3, 0.5], [0, 1, 0, 0], 2, None, [0, 1, 0, 0]),
        # no threshold: the quota most confident
        ([0.1, 0.2, 0.3, 0.5], [1, 1, 1, 1], 2, None, [0, 0, 1, 1]),
    ],
)
def test_commit_rule_by_hand(confidence, masked, quota, threshold, expected) -> None:
    take = _commit(torch.tensor([confidence]), torch.tensor([masked]).bool(), quota, threshold)
    assert take.long().tolist() == [expected]


def test_quotas_split_the_block_remainder_first() -> None:
    assert BlockDiffusionSampling(block_length=8, steps=3).quotas() == [3, 3, 2]
    assert BlockDiffusionSampling(block_length=4, steps=4).quotas() == [1, 1, 1, 1]
    assert BlockDiffusionSampling(block_length=4, steps=9).quotas() == [1, 1, 1, 1]  # official zeros dropped


def test_canvas_puts_every_grid_on_a_block_boundary() -> None:
    """Prompts of 3 and 9 tokens, blocks of 4, 8 new tokens: row 0's grid is shifted by two blocks so that both
    prompts end in block 2; each grid ends at the block holding prompt + gen_length."""
    ids = torch.tensor([[0] * 6 + [11, 12, 13], [21, 22, 23, 24, 25, 26, 27, 28, 29]])
    mask = torch.tensor([[0] * 6 + [1] * 3, [1] * 9])
    canvas = _canvas(ids, mask, BlockDiffusionSampling(gen_length=8, block_length=4), mask_id=99, pad_id=0)
    assert canvas.first_block == 2
    assert canvas.offset.tolist() == [8, 0]
    assert canvas.gen_start.tolist() == [11, 9]
    assert canvas.end.tolist() == [20, 20]
    assert canvas.x[0].tolist() == [0] * 8 + [11, 12, 13] + [99] * 9
    assert canvas.x[1].tolist() == list(range(21, 30)) + [99] * 11
    assert canvas.position_ids[0, 8:11].tolist() == [0, 1, 2]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold=1.5"):
        BlockDiffusionSampling(threshold=1.5).validate()
    with pytest.raises(ValueError, match="must all be positive"):
        BlockDiffusionSampling(steps=0).validate()
    with pytest.raises(ValueError, match="attention_mask"):
        generate_blocks(None, torch.ones(2, 3, dtype=torch.long), BlockDiffusionSampling(), mask_token_id=9,
                        attention_mask=torch.ones(2, 4))  # fmt: skip
