"""`generate(prefill=...)`: completion tokens fixed in place (IGPO's inpainting), the free ones decoded around
them; against a restatement of IGPO's `generate_inpainting` and the invariants of the cached paths."""

from __future__ import annotations

import pytest
import torch

from d1.diffusion.sampling import generate
from tests.diffusion.test_fast_sampling import Biased, MaskedInput
from tests.diffusion.test_sampling import EOT, MASK, llada_reference, random_prompt, tiny_model


def hint_prefill(seed: int, batch: int, gen_length: int, fixed_block: slice | None = None) -> torch.Tensor:
    """[batch, gen_length]: about 40% of the positions hold random tokens, the rest MASK; `fixed_block` all
    fixed in every row (a block with nothing to decode)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, EOT, (batch, gen_length), generator=generator)
    fixed = torch.rand(batch, gen_length, generator=generator) < 0.4
    if fixed_block is not None:
        fixed[:, fixed_block] = True
    return torch.where(fixed, tokens, MASK)


def padded_prompt(seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = random_prompt(seed, batch, length)
    attention_mask = torch.ones_like(prompt)
    attention_mask[0, : length // 2] = 0
    return prompt, attention_mask


CASES = [  # seed, gen_length, block_length, steps, temperature, remasking, cfg_scale
    (40, 16, 4, 8, 0.0, "low_confidence", 0.0),
    (41, 16, 4, 16, 0.9, "low_confidence", 0.0),
    (42, 12, 4, 6, 0.5, "random", 0.5),
    (43, 16, 16, 8, 0.8, "low_confidence", 1.0),
]


@pytest.mark.parametrize("case", CASES)
def test_exact_prefill_equals_igpo_inpainting(case):
    seed, gen_length, block_length, steps, temperature, remasking, cfg_scale = case
    model = tiny_model(seed, n_kv_heads=2)
    prompt, attention_mask = padded_prompt(seed, 3, 5)
    prefill = hint_prefill(seed, 3, gen_length, slice(4, 8) if block_length == 4 else None)
    settings = dict(
        steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature,
        remasking=remasking, cfg_scale=cfg_scale,
    )  # fmt: skip
    expected = llada_reference(
        MaskedInput(model, attention_mask), prompt, generator=torch.Generator().manual_seed(seed),
        prefill=prefill, **settings,
    )  # fmt: skip
    out = generate(
        model, prompt, attention_mask=attention_mask, generator=torch.Generator().manual_seed(seed),
        prefill=prefill, **settings,
    )  # fmt: skip
    assert torch.equal(out, expected)
    fixed = prefill != MASK
    assert torch.equal(out[:, 5:][fixed], prefill[fixed])


@pytest.mark.parametrize(
    "options",
    [
        {"cache": "dual"},
        {"cache": "prefix"},
        {"cache": "dual", "unmask": "threshold", "threshold": 0.5},
        {"cache": "dual", "temperature": 1.0, "cfg_scale": 0.5},
    ],
)
def test_cached_prefill_keeps_fixed_tokens_and_fills_the_rest(options):
    model = Biased(tiny_model(44, n_kv_heads=2))  # no [MASK] predictions: every free position gets a token
    prompt, attention_mask = padded_prompt(44, 3, 6)
    prefill = hint_prefill(44, 3, 16, slice(8, 12))
    out = generate(
        model, prompt, attention_mask=attention_mask, gen_length=16, block_length=4, steps=16, prefill=prefill,
        generator=torch.Generator().manual_seed(0), **options,
    )  # fmt: skip
    fixed = prefill != MASK
    assert torch.equal(out[:, :6], prompt) and torch.equal(out[:, 6:][fixed], prefill[fixed])
    assert not (out == MASK).any()


@pytest.mark.parametrize("cache", [None, "dual"])
def test_cache_with_one_step_per_block_and_prefill_is_exact(cache):
    """Every step is a block's first step (a full forward), so the dual cache changes nothing."""
    model = tiny_model(45, n_kv_heads=1)
    prompt, attention_mask = padded_prompt(45, 3, 6)
    settings = dict(
        gen_length=16, block_length=4, steps=4, attention_mask=attention_mask, prefill=hint_prefill(45, 3, 16)
    )
    assert torch.equal(generate(model, prompt, cache=cache, **settings), generate(model, prompt, **settings))


@pytest.mark.parametrize("cache, temperature", [(None, 0.0), (None, 0.7), ("dual", 0.7)])
def test_prefill_without_free_positions_is_returned_without_a_forward_pass(cache, temperature):
    model = tiny_model(46)
    prompt = random_prompt(46, 2, 4)
    prefill = random_prompt(47, 2, 8)
    stats: dict = {}
    out = generate(
        model, prompt, gen_length=8, block_length=4, steps=8, temperature=temperature, cache=cache,
        prefill=prefill, stats=stats, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(out, torch.cat([prompt, prefill], dim=1)) and stats["forward_passes"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.9, "remasking": "random", "cfg_scale": 0.5},
        {"temperature": 0.9},
        {"cache": "dual", "temperature": 0.9},
        {"cache": "dual", "unmask": "threshold", "threshold": 0.3},
    ],
)
def test_all_mask_prefill_changes_nothing(options):
    model = tiny_model(48, n_kv_heads=2)
    prompt, attention_mask = padded_prompt(48, 3, 5)
    settings = dict(gen_length=16, block_length=8, steps=8, attention_mask=attention_mask, **options)
    free = torch.full((3, 16), MASK)
    out = generate(model, prompt, prefill=free, generator=torch.Generator().manual_seed(3), **settings)
    assert torch.equal(out, generate(model, prompt, generator=torch.Generator().manual_seed(3), **settings))


@pytest.mark.parametrize(
    "prefill, options, message",
    [
        (torch.full((2, 7), MASK), {}, r"prefill shape \(2, 7\) must be \[batch, gen_length\] = \[2, 8\]"),
        (torch.full((2, 8), float(MASK)), {}, "prefill dtype torch.float32 must be an integer dtype"),
        (torch.full((2, 8), MASK), {"early_stop": True}, "early_stop=True fills finished rows with EOS"),
    ],
)
def test_bad_prefill_raises_before_any_forward(prefill, options, message):
    model = Biased(tiny_model(49))
    with pytest.raises(ValueError, match=message):
        generate(model, random_prompt(49, 2, 4), gen_length=8, block_length=4, steps=4, prefill=prefill, **options)
    assert model.inputs == []
