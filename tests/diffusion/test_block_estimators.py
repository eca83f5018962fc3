"""The block-diffusion estimators (`block_elbo`, `trajectory`) against their definitions, on a block-causal toy
small enough to enumerate: vocabulary {0, 1, 2} plus the mask token, a grid of blocks of 4 from the prompt's
first token. The references run the toy on one plain sequence under a block-causal mask written here (no
[clean | noisy] layout), one forward per conditional."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d1.diffusion.block_diffusion import BlockDiffusionSampling, generate_blocks
from d1.diffusion.likelihood import ElboTerms, MCOptions, block_elbo_terms, per_token_logps
from d1.diffusion.trace import Trace
from tests.diffusion.test_estimators import assert_mean_within

MASK = 3
BLOCK = 4


class BlockLookup(nn.Module):
    """Logits [B, L, 3]: a fixed random function of (query position, key token, key position) summed over the keys
    the attention mask lets a query see, plus a bias per position, so every conditional depends on exactly
    which visible tokens are masked. Takes `position_ids`, 4-D boolean masks and `logits_to_keep` like the
    block-diffusion families."""

    def __init__(self, positions: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(positions, MASK + 1, positions, 3, generator=g))
        self.bias = nn.Parameter(torch.randn(positions, 3, generator=g))
        self.config = SimpleNamespace(mask_token_id=MASK, logits_shifted=False, block_diffusion=True)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_):
        b, length = input_ids.shape
        pos = torch.arange(length).expand(b, length) if position_ids is None else position_ids
        terms = self.weight[pos[:, :, None], input_ids[:, None, :], pos[:, None, :]]  # [B, Lq, Lk, 3]
        see = torch.ones(b, length, length, dtype=torch.bool) if attention_mask is None else attention_mask[:, 0]
        logits = (terms * see[..., None]).sum(2) + self.bias[pos]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, cache=None)


def logps_block_causal(model: nn.Module, sequence: list[int], hidden: set[int]) -> list[float]:
    """log p of every token of `sequence` (one unpadded row, grid from position 0) with `hidden` masked, under
    plain block-causal attention: position i sees j when block(j) <= block(i)."""
    ids = torch.tensor([[MASK if i in hidden else x for i, x in enumerate(sequence)]])
    blocks = torch.arange(len(sequence)) // BLOCK
    see = (blocks[None, :] <= blocks[:, None])[None, None]
    with torch.no_grad():
        logps = model(ids, attention_mask=see).logits[0].log_softmax(-1)
    return [float(logps[i, x]) for i, x in enumerate(sequence)]


def exact_block_elbo(model: nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Per-token block-wise ELBO, enumerated: for each grid block's completion tokens C (n of them), every
    nonempty S in C masked (later blocks masked, invisible anyway), token i in S weighted (|S|-1)!(n-|S|)!/n!."""
    p, total = len(prompt), torch.zeros(len(completion), dtype=torch.float64)
    for _, members in itertools.groupby(range(len(completion)), key=lambda i: (p + i) // BLOCK):
        members = list(members)
        later = {p + i for i in range(members[-1] + 1, len(completion))}
        n = len(members)
        for size in range(1, n + 1):
            coef = math.factorial(size - 1) * math.factorial(n - size) / math.factorial(n)
            for subset in itertools.combinations(members, size):
                logps = logps_block_causal(model, prompt + completion, {p + i for i in subset} | later)
                for i in subset:
                    total[i] += coef * logps[p + i]
    return total


@pytest.mark.parametrize("antithetic", [False, True])
def test_block_elbo_is_unbiased_for_the_enumerated_block_elbo(antithetic):
    # prompt of 3: the first block holds the prompt and completion token 0; the second, completion tokens 1-4
    model, prompt, completion = BlockLookup(8, seed=1), [2, 0, 1], [1, 0, 2, 2, 1]
    ids = torch.tensor([prompt + completion]).repeat(20000, 1)
    with torch.no_grad():
        estimates = per_token_logps(model, ids, completion_length=5, estimator="block_elbo", block_length=BLOCK,
                                    mc=MCOptions(samples=1, antithetic=antithetic),
                                    generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert_mean_within(estimates, exact_block_elbo(model, prompt, completion))


def test_block_elbo_terms_equal_one_block_at_a_time_forwards():
    """Every sample's log-probs from the one [clean | noisy] pass equal, block by block, a plain forward with the
    earlier blocks clean and that block noised as drawn; the weights are (n + 1) / count per block."""
    model, prompt, completion = BlockLookup(10, seed=2), [1, 2], [0, 1, 1, 2, 0, 2]
    ids = torch.tensor([prompt + completion]).repeat(3, 1)
    with torch.no_grad():
        terms = block_elbo_terms(model, ids, completion_length=6, block_length=BLOCK, mc=MCOptions(samples=2),
                                 generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert terms.logps.shape == (4, 3, 6)  # 2 samples + their complements, 3 rows, 6 tokens
    blocks = [[0, 1], [2, 3, 4, 5]]  # completion tokens of grid blocks 0 (shared with the prompt) and 1
    for s, row in itertools.product(range(4), range(3)):
        masked = terms.masked[s, row]
        for members in blocks:
            hidden = {2 + i for i in members if masked[i]}
            later = {2 + i for i in range(members[-1] + 1, 6)}
            expected = logps_block_causal(model, prompt + completion, hidden | later)
            for i in members:
                assert math.isclose(float(terms.logps[s, row, i]), expected[2 + i], abs_tol=1e-5)
                count = int(masked[members].sum())
                assert math.isclose(float(terms.weight[s, row, i]), (len(members) + 1) / max(count, 1), rel_tol=1e-6)
                assert math.isclose(float(terms.level[s, row, i]), count / len(members), rel_tol=1e-6)
    assert torch.equal(terms.masked[2:], ~terms.masked[:2])  # antithetic: the complement in every block


def test_block_elbo_of_left_padded_rows_equals_rows_alone():
    model = BlockLookup(12, seed=5)
    rows = torch.tensor([[2, 1, 0, 0, 1, 2, 2, 0], [1, 1, 2, 0, 2, 1, 0, 1]])
    padded = torch.cat([torch.full((2, 4), 0), rows], dim=1)
    attention = torch.cat([torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)], dim=1)
    settings = dict(completion_length=5, estimator="block_elbo", block_length=BLOCK)
    with torch.no_grad():
        batch = per_token_logps(model, padded, attention_mask=attention, generator=torch.Generator().manual_seed(6),
                                **settings)  # fmt: skip
        alone = per_token_logps(model, rows, generator=torch.Generator().manual_seed(6), **settings)
    torch.testing.assert_close(batch, alone)


def sample_with_trace(model: nn.Module, prompts: torch.Tensor, attention: torch.Tensor, gen_length: int, seed: int):
    """A temperature-1 block-diffusion decode (2 steps a block) with its trace."""
    trace = Trace()
    settings = BlockDiffusionSampling(gen_length=gen_length, block_length=BLOCK, steps=2, temperature=1.0, cache=False)
    output = generate_blocks(model, prompts, settings, mask_token_id=MASK, attention_mask=attention,
                             generator=torch.Generator().manual_seed(seed), trace=trace)  # fmt: skip
    return output, trace


@pytest.mark.parametrize("chunk_rows", [1, 64])
def test_trajectory_equals_the_samplers_own_step_probabilities(chunk_rows):
    """At temperature 1 the trace's confidence of a committed token is its probability given the canvas before
    its step, computed by the sampler itself: the trajectory estimate must reproduce it (rows whose answer ends
    on a block boundary: prompts of 3 and 7 tokens, 5 generated)."""
    model = BlockLookup(12, seed=7)
    prompts = torch.tensor([[0, 0, 0, 0, 2, 1, 0], [1, 2, 0, 1, 1, 0, 2]])
    attention = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        output, trace = sample_with_trace(model, prompts, attention, 5, seed=8)
        steps, tokens = trace.committed()
        assert torch.equal(tokens, output[:, 7:]) and (steps >= 0).all()
        got = per_token_logps(model, output, completion_length=5, attention_mask=torch.cat(
            [attention, torch.ones(2, 5, dtype=torch.long)], dim=1), estimator="trajectory", block_length=BLOCK,
            steps=steps, chunk_rows=chunk_rows)  # fmt: skip
    expected = torch.zeros(2, 5, dtype=torch.float64)
    for b, row in enumerate(trace.rows):
        for step in row.steps:
            for position, p in zip(step.positions, step.confidences, strict=True):
                expected[b, position] = math.log(p)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shrinkage", [1, 2, 3])
def test_trajectory_with_shrinkage_equals_a_direct_loop(shrinkage):
    """Brute force: for each block, its distinct steps in groups of `shrinkage`; a group's tokens scored by a
    plain forward with the earlier blocks clean and the block's tokens of earlier groups shown."""
    model, prompt, completion = BlockLookup(12, seed=9), [1, 0], [2, 2, 0, 1, 1, 0, 2, 1]
    steps = torch.tensor([[0, 1, 3, 3, 2, 5, 4, 4]])  # blocks: tokens 0-1, 2-5, 6-7; -1 never happens here
    with torch.no_grad():
        got = per_token_logps(model, torch.tensor([prompt + completion]), completion_length=8,
                              estimator="trajectory", block_length=BLOCK, steps=steps, shrinkage=shrinkage)[0]  # fmt: skip
    expected = torch.zeros(8)
    for members in ([0, 1], [2, 3, 4, 5], [6, 7]):
        distinct = sorted({int(steps[0, i]) for i in members})
        for first in range(0, len(distinct), shrinkage):
            group = set(distinct[first : first + shrinkage])
            shown = {i for i in members if steps[0, i] < distinct[first]}
            hidden = {2 + i for i in range(members[0], 8) if i not in shown}
            logps = logps_block_causal(model, prompt + completion, hidden)
            for i in members:
                if int(steps[0, i]) in group:
                    expected[i] = logps[2 + i]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_trajectory_skips_tokens_no_step_committed_and_gradients_flow():
    model, ids = BlockLookup(8, seed=10), torch.tensor([[1, 2, 0, 1, 2, 0, 0, 0]])
    steps = torch.tensor([[0, 1, 1, 2, -1, -1]])  # early stop: the last two never committed, never shown
    logps = per_token_logps(model, ids, completion_length=6, estimator="trajectory", block_length=BLOCK, steps=steps)
    assert logps[0, 4:].eq(0).all() and logps[0, :4].lt(0).all()
    logps.sum().backward()
    assert model.weight.grad.abs().sum() > 0
    with torch.no_grad():
        expected = logps_block_causal(model, ids[0].tolist(), {2, 3, 4, 5, 6, 7})[2]  # step 0: all masked
    assert math.isclose(float(logps[0, 0].detach()), expected, abs_tol=1e-5)


def test_block_estimators_refuse_a_missing_grid_or_steps():
    model, ids = BlockLookup(8), torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="block_length=0"):
        per_token_logps(model, ids, completion_length=4, estimator="block_elbo")
    with pytest.raises(ValueError, match="needs `steps`"):
        per_token_logps(model, ids, completion_length=4, estimator="trajectory", block_length=BLOCK)
    with pytest.raises(ValueError, match="shrinkage=0"):
        per_token_logps(model, ids, completion_length=4, estimator="trajectory", block_length=BLOCK,
                        steps=torch.zeros(1, 4, dtype=torch.long), shrinkage=0)  # fmt: skip


def test_spg_upper_bound_divides_by_each_tokens_block_level():
    """By hand: one sample, blocks {0, 1} and {2, 3, 4}; tokens 0 (block level 1/2) and 2, 3 (level 2/3) masked."""
    p = torch.tensor([[[0.5, 0.9, 0.2, 0.4, 0.9]]])
    masked = torch.tensor([[[1, 0, 1, 1, 0]]], dtype=torch.bool)
    level = torch.tensor([[[0.5, 0.5, 2 / 3, 2 / 3, 2 / 3]]])
    terms = ElboTerms(logps=p.log(), masked=masked, scored=masked, weight=torch.ones(1, 1, 5), level=level)
    expected = (math.log(0.5 / 0.5) + math.log(0.2 * 1.5) + math.log(0.4 * 1.5)) / 3  # beta 1
    torch.testing.assert_close(terms.eubo(1.0, torch.ones(1, 5)), torch.tensor([expected]))


@pytest.mark.parametrize("prompt_length", [5, 8])
def test_trajectory_equals_the_tiny_llada2s_own_step_probabilities(tiny_llada2_dir, prompt_length):
    """The same on the tiny LLaDA 2.x (2 layers: a prompt token of the first answer block must see that block as
    the sampler showed it, masked, in every layer), blocks of 4, 2 steps a block; answers of 3 or 8 tokens end
    on a block boundary."""
    from d1.models.loading import load_model

    model = load_model(str(tiny_llada2_dir), dtype="float32").eval()
    gen_length = 8 if prompt_length % BLOCK == 0 else BLOCK - prompt_length % BLOCK + BLOCK
    prompts = torch.randint(5, 40, (2, prompt_length), generator=torch.Generator().manual_seed(11))
    trace = Trace()
    settings = BlockDiffusionSampling(gen_length=gen_length, block_length=BLOCK, steps=2, temperature=1.0)
    with torch.no_grad():
        output = generate_blocks(model, prompts, settings, mask_token_id=model.config.mask_token_id,
                                 generator=torch.Generator().manual_seed(12), trace=trace)  # fmt: skip
        steps, _ = trace.committed()
        got = per_token_logps(model, output, completion_length=gen_length, estimator="trajectory",
                              block_length=BLOCK, steps=steps)  # fmt: skip
    expected = torch.zeros(2, gen_length, dtype=torch.float64)
    for b, row in enumerate(trace.rows):
        for step in row.steps:
            for position, p in zip(step.positions, step.confidences, strict=True):
                expected[b, position] = math.log(p)
    decided = steps >= 0
    torch.testing.assert_close(got.double()[decided], expected[decided], atol=1e-4, rtol=1e-4)


def test_block_elbo_on_the_tiny_llada2_equals_one_block_at_a_time_forwards(tiny_llada2_dir):
    """Each sample's log-probs from the one [clean | noisy] pass equal, block by block, a plain block-causal
    forward of the 2-layer model with the earlier blocks clean and that block noised as drawn (a prompt of 6:
    the first answer block holds 2 prompt tokens)."""
    from d1.models.loading import load_model

    model = load_model(str(tiny_llada2_dir), dtype="float32").eval()
    mask_id = model.config.mask_token_id
    ids = torch.randint(5, 40, (2, 6 + 10), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        terms = block_elbo_terms(model, ids, completion_length=10, block_length=BLOCK, mc=MCOptions(samples=1),
                                 generator=torch.Generator().manual_seed(14))  # fmt: skip
        blocks = torch.arange(16) // BLOCK
        see = (blocks[None, :] <= blocks[:, None])[None, None]
        for s, row in itertools.product(range(2), range(2)):
            for j in (1, 2, 3):  # grid blocks 1 (prompt 4-5, answer 0-1), 2, 3 (answer 2-5, 6-9)
                noisy = ids[row].clone()
                chosen = (blocks == j) & (torch.arange(16) >= 6) & torch.cat([torch.zeros(6, dtype=torch.bool),
                                                                               terms.masked[s, row]])  # fmt: skip
                noisy[chosen] = mask_id
                noisy[blocks > j] = mask_id
                logps = model(noisy[None], attention_mask=see).logits[0].log_softmax(-1)
                columns = ((blocks == j) & (torch.arange(16) >= 6)).nonzero().flatten()
                expected = logps[columns, ids[row, columns]]
                torch.testing.assert_close(terms.logps[s, row, columns - 6], expected, atol=1e-5, rtol=1e-5)
