"""Left-to-right rollouts (JustGRPO): `generate(block_length=1, steps=gen_length)` decodes one token a step in
order, for every sampler option a rollout uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d1.diffusion.sampling import generate
from tests.diffusion.test_fast_sampling import NO_MASK, Biased, MaskedInput
from tests.diffusion.test_sampling import EOT, MASK, VOCAB, llada_reference, random_prompt, tiny_model


def padded_batch(seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts [batch, length] whose first and last rows are left-padded (attention mask 0)."""
    prompt = random_prompt(seed, batch, length)
    attention_mask = torch.ones_like(prompt)
    attention_mask[0, : length // 2] = 0
    attention_mask[-1, :1] = 0
    return prompt, attention_mask


@torch.no_grad()
def greedy_left_to_right(
    model: torch.nn.Module, prompt: torch.Tensor, attention_mask: torch.Tensor, gen_length: int
) -> torch.Tensor:
    """Position k gets the argmax of the model's logits at k given the prompt, tokens < k and masks after."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK)], dim=1)
    full_mask = torch.cat([attention_mask, attention_mask.new_ones(prompt.shape[0], gen_length)], dim=1)
    for k in range(prompt.shape[1], x.shape[1]):
        x[:, k] = model(x, attention_mask=full_mask).logits[:, k].argmax(dim=-1)
    return x


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"remasking": "random"},
        {"cache": "dual"},
        {"cache": "prefix"},
        {"cache": "dual", "unmask": "threshold", "threshold": 0.5},
    ],
)
def test_block_length_one_is_greedy_left_to_right(options):
    model = Biased(tiny_model(30, n_kv_heads=2))  # NO_MASK: a greedy [MASK] would stay masked
    prompt, attention_mask = padded_batch(30, 3, 6)
    expected = greedy_left_to_right(model, prompt, attention_mask, 12)
    out = generate(model, prompt, attention_mask=attention_mask, gen_length=12, block_length=1, steps=12, **options)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("remasking, cfg_scale", [("low_confidence", 0.0), ("random", 0.5)])
def test_sampled_block_length_one_is_llada_generate(remasking, cfg_scale):
    """JustGRPO's rollout is LLaDA's `generate` with block_length 1: the same samples from the same stream."""
    model = tiny_model(31, n_kv_heads=1)
    prompt, attention_mask = padded_batch(31, 3, 5)
    settings = dict(
        steps=10, gen_length=10, block_length=1, temperature=0.9, cfg_scale=cfg_scale, remasking=remasking
    )
    expected = llada_reference(
        MaskedInput(model, attention_mask), prompt, generator=torch.Generator().manual_seed(5), **settings
    )
    out = generate(
        model, prompt, attention_mask=attention_mask, generator=torch.Generator().manual_seed(5), **settings
    )
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cache", [None, "dual"])
def test_first_sampled_token_follows_the_tempered_softmax(cache):
    """4000 rollouts of one prompt: the first token's frequencies match softmax(logits / temperature)."""
    bias = NO_MASK + 2.0 * torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))
    model = Biased(tiny_model(32), bias)
    prompt = random_prompt(32, 1, 5).expand(4000, -1)
    temperature = 0.7
    with torch.no_grad():
        logits = model(torch.cat([prompt[:1], torch.tensor([[MASK]])], dim=1)).logits[0, -1]
    expected = F.softmax(logits.double() / temperature, dim=-1)
    out = generate(
        model, prompt, gen_length=1, block_length=1, steps=1, temperature=temperature, cache=cache,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    frequencies = torch.bincount(out[:, -1], minlength=VOCAB).double() / len(out)
    tolerance = 4.5 * (expected * (1 - expected) / len(out)).sqrt() + 1e-3
    assert (frequencies - expected).abs().le(tolerance).all()
    assert expected.max() > 0.2 and expected[:EOT].min() < 0.01  # a far from uniform distribution
