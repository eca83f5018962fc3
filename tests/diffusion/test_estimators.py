"""The `mc_elbo` and `left_to_right` estimators (and `one_step`, `coupled`) against their definitions,
enumerated on a model small enough to list every mask: vocabulary {0, 1, 2} plus the mask token, a
completion of 3-4 tokens. Monte-Carlo expectations are means over many rows of one seeded call, checked
within 4 standard errors."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.likelihood import ElboTerms, MCOptions, elbo_terms, per_token_logps
from d1.diffusion.sampling import generate
from tests.diffusion.test_likelihood import MASK as LLADA_MASK
from tests.diffusion.test_likelihood import Recorder, random_ids, tiny_model

MASK = 3
PROMPT = [2, 0]


class Lookup(nn.Module):
    """Logits [B, L, 3] as a fixed random linear function of the one-hot input: every position sees every other,
    so each conditional depends on exactly which tokens are masked."""

    def __init__(self, length: int, seed: int = 0, shifted: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(length, MASK + 1, length, 3, generator=g))
        self.bias = nn.Parameter(torch.randn(length, 3, generator=g))
        self.config = SimpleNamespace(mask_token_id=MASK, logits_shifted=shifted)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        onehot = F.one_hot(input_ids, MASK + 1).float()
        return SimpleNamespace(logits=torch.einsum("bjt,jtiv->biv", onehot, self.weight) + self.bias)


class KeepingLookup(Lookup):
    """A `Lookup` that takes `logits_to_keep` (an int N: the last N columns, 0 all; or a slice)."""

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):  # type: ignore[override]
        logits = super().forward(input_ids).logits
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return SimpleNamespace(logits=logits[:, keep] if logits_to_keep != 0 else logits)


def logp_given(model: nn.Module, sequence: list[int], hidden: set[int]) -> list[float]:
    """log p of every token of `sequence` with the positions in `hidden` masked (one unshifted forward pass)."""
    ids = torch.tensor([[MASK if i in hidden else x for i, x in enumerate(sequence)]])
    with torch.no_grad():
        logps = model(ids).logits[0].log_softmax(-1)
    return [float(logps[i, x]) for i, x in enumerate(sequence)]


def exact_elbo(model: nn.Module, completion: list[int], block: int = 0) -> torch.Tensor:
    """Per-token exact (block-wise) ELBO: for each block, every nonempty subset S of it masked (later blocks
    masked, earlier clean), token i in S weighted (|S|-1)!(L-|S|)!/L!."""
    size, p = block or len(completion), len(PROMPT)
    total = torch.zeros(len(completion), dtype=torch.float64)
    for start in range(0, len(completion), size):
        later = set(range(p + start + size, p + len(completion)))
        for n in range(1, size + 1):
            coef = math.factorial(n - 1) * math.factorial(size - n) / math.factorial(size)
            for subset in itertools.combinations(range(start, start + size), n):
                logps = logp_given(model, PROMPT + completion, {p + i for i in subset} | later)
                for i in subset:
                    total[i] += coef * logps[p + i]
    return total


def exact_coupled(model: nn.Module, completion: list[int]) -> torch.Tensor:
    """E[coupled] per token: token i scored with mask S (S containing i) with probability
    2 |S|! (T-|S|)! / (T+1)! (t ~ U(0, 1), each token chosen with probability t, or the complement)."""
    t, p = len(completion), len(PROMPT)
    total = torch.zeros(t, dtype=torch.float64)
    for n in range(1, t + 1):
        coef = 2 * math.factorial(n) * math.factorial(t - n) / math.factorial(t + 1)
        for subset in itertools.combinations(range(t), n):
            logps = logp_given(model, PROMPT + completion, {p + i for i in subset})
            for i in subset:
                total[i] += coef * logps[p + i]
    return total


def assert_mean_within(draws: torch.Tensor, expected: torch.Tensor) -> None:
    """Column means of `draws` [N, T] equal `expected` [T] within 4 standard errors."""
    draws = draws.double()
    error = (draws.mean(0) - expected).abs()
    bound = 4 * draws.std(0) / math.sqrt(len(draws)) + 1e-6
    assert (error <= bound).all(), f"error {error.tolist()} exceeds 4 standard errors {bound.tolist()}"


def draws(model: nn.Module, completion: list[int], n: int, seed: int, **settings) -> torch.Tensor:
    """n independent estimates [n, T] of one sequence (n copies in one call, prompt never masked)."""
    ids = torch.tensor([PROMPT + completion]).repeat(n, 1)
    with torch.no_grad():
        return per_token_logps(
            model,
            ids,
            completion_length=len(completion),
            p_mask_prompt=0.0,
            generator=torch.Generator().manual_seed(seed),
            **settings,
        )


@pytest.mark.parametrize(
    "mc",
    [
        MCOptions(samples=1, antithetic=False),
        MCOptions(samples=2, antithetic=True),
        MCOptions(samples=2, t_sampling="stratified", antithetic=False),
        MCOptions(samples=3, t_sampling="stratified", antithetic=True),
    ],
)
def test_mc_elbo_is_unbiased_for_the_enumerated_elbo(mc):
    model, completion = Lookup(5, seed=1), [1, 0, 2]
    estimates = draws(model, completion, 20000, seed=11, estimator="mc_elbo", mc=mc)
    assert_mean_within(estimates, exact_elbo(model, completion))


@pytest.mark.parametrize("t_sampling, antithetic", [("random", True), ("stratified", False), ("stratified", True)])
def test_block_wise_mc_elbo_is_unbiased_for_the_enumerated_block_wise_elbo(t_sampling, antithetic):
    model, completion = Lookup(6, seed=2), [2, 1, 1, 0]
    block_elbo = exact_elbo(model, completion, block=2)
    assert (block_elbo - exact_elbo(model, completion)).abs().max() > 0.05  # a different bound
    mc = MCOptions(samples=2, block_length=2, t_sampling=t_sampling, antithetic=antithetic)
    estimates = draws(model, completion, 20000, seed=12, estimator="mc_elbo", mc=mc)
    assert_mean_within(estimates, block_elbo)


def test_coupled_expectation_and_one_step_equal_their_definitions():
    model, completion = Lookup(5, seed=3), [0, 2, 1]
    assert_mean_within(draws(model, completion, 20000, seed=13, estimator="coupled"), exact_coupled(model, completion))
    one_step = draws(model, completion, 1, seed=0, estimator="one_step")[0]
    expected = logp_given(model, PROMPT + completion, {2, 3, 4})[2:]
    torch.testing.assert_close(one_step, torch.tensor(expected))


def test_stratified_with_one_sample_per_cell_visits_every_cell_once():
    recorder = Recorder(Lookup(5, seed=4))
    ids = torch.tensor([PROMPT + [1, 1, 0]]).repeat(6, 1)
    with torch.no_grad():
        elbo_terms(recorder, ids, completion_length=3, mc=MCOptions(samples=4, t_sampling="stratified",
                   antithetic=False), p_mask_prompt=0.0, generator=torch.Generator().manual_seed(5))  # fmt: skip
    (rows,) = recorder.inputs
    counts = (rows[:, 2:] == MASK).sum(-1).view(4, 6)  # cells 0..3 = mask counts 0..3 without blocks
    assert torch.equal(counts.sort(dim=0).values, torch.arange(4)[:, None].expand(4, 6))


def test_one_batched_pass_with_complementary_rows_and_block_structure():
    recorder = Recorder(tiny_model(6))
    ids = random_ids(6, 3, 20)
    mc = MCOptions(samples=2, block_length=4)
    with torch.no_grad():
        terms = elbo_terms(recorder, ids, completion_length=12, mc=mc, p_mask_prompt=0.3,
                           generator=torch.Generator().manual_seed(6))  # fmt: skip
    (rows,) = recorder.inputs  # one forward pass of 2k * B rows: k * B samples, then their complements
    assert rows.shape == (12, 20)
    first, second = rows[:6], rows[6:]
    assert torch.equal(first[:, :8], second[:, :8])  # each sample's prompt mask shared with its complement
    assert not torch.equal(first[:3, :8], first[3:, :8])  # and drawn anew for each sample
    hidden_a, hidden_b = first[:, 8:] == LLADA_MASK, second[:, 8:] == LLADA_MASK
    differ = hidden_a ^ hidden_b  # exactly the chosen block: complementary there, equal elsewhere
    block = torch.arange(12) // 4
    chosen = differ.view(6, 3, 4).all(-1).float().argmax(-1)
    assert torch.equal(differ, block[None] == chosen[:, None])
    later = block[None] > chosen[:, None]
    assert torch.equal(hidden_a & ~differ, later) and torch.equal(hidden_b & ~differ, later)  # earlier clean
    assert torch.equal(terms.masked.flatten(0, 1), torch.cat([hidden_a, hidden_b]))
    assert torch.equal(terms.scored.flatten(0, 1), torch.cat([hidden_a, hidden_b]) & ~torch.cat([later, later]))
    counts = terms.scored.sum(-1)
    torch.testing.assert_close(terms.weight, 3 * 5 / counts.clamp(min=1).float())  # nb (L + 1) / count


def test_mc_options_name_the_field():
    for bad, field in [(dict(samples=0), "mc_samples"), (dict(block_length=-1), "mc_block_length"),
                       (dict(t_sampling="sobol"), "mc_t_sampling")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            MCOptions(**bad)
    with pytest.raises(ValueError, match="mc_block_length=5 must divide"):
        per_token_logps(None, torch.zeros(1, 10, dtype=torch.long), completion_length=8, estimator="mc_elbo",
                        mc=MCOptions(block_length=5))  # fmt: skip  # fails before touching the model


def test_left_to_right_equals_a_hand_loop_of_single_passes():
    model = tiny_model(7)
    ids = random_ids(7, 3, 13)
    with torch.no_grad():
        got = per_token_logps(model, ids, completion_length=5, estimator="left_to_right", temperature=0.7,
                              chunk_rows=4)  # fmt: skip
        expected = torch.zeros(3, 5)
        for k in range(5):
            row = ids.clone()
            row[:, 8 + k :] = LLADA_MASK
            logits = model(row).logits[:, 8 + k] / 0.7
            expected[:, k] = logits.log_softmax(-1).gather(-1, ids[:, 8 + k, None]).squeeze(-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_left_to_right_gradients_equal_the_hand_loop_and_hold_one_pass_of_activations():
    model = tiny_model(7)
    ids = random_ids(7, 3, 13)
    saved: list[int] = []

    def count(tensor):  # every tensor autograd keeps for backward
        saved.append(tensor.numel())
        return tensor

    got = per_token_logps(model, ids, completion_length=5, estimator="left_to_right", chunk_rows=4)
    got.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = torch.zeros(3, 5)
    for k in range(5):
        row = ids.clone()
        row[:, 8 + k :] = LLADA_MASK
        expected[:, k] = model(row).logits[:, 8 + k].log_softmax(-1).gather(-1, ids[:, 8 + k, None]).squeeze(-1)
    expected.sum().backward()
    for got_grad, param in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(got_grad, param.grad, atol=1e-5, rtol=1e-4)
    # checkpointed passes keep only their inputs: far less than the 15 rows' activations a plain pass keeps
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        per_token_logps(model, ids, completion_length=5, estimator="left_to_right", chunk_rows=4)
        kept = sum(saved)
        saved.clear()
        model(ids.repeat(5, 1)).logits.sum()  # the 15 rows in plain passes
        plain = sum(saved)
    assert kept * 20 < plain


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_left_to_right_through_a_shifted_model_with_logits_to_keep(chunk_rows):
    model = KeepingLookup(6, seed=8, shifted=True)
    ids = torch.tensor([PROMPT + [1, 2, 0, 0], PROMPT + [2, 2, 1, 0]])
    with torch.no_grad():
        got = per_token_logps(model, ids, completion_length=4, estimator="left_to_right", chunk_rows=chunk_rows)
        expected = torch.zeros(2, 4)
        for k in range(4):
            row = ids.clone()
            row[:, 2 + k :] = MASK
            logits = model(row).logits[:, 1 + k]  # shifted: the output one to the left predicts the token
            expected[:, k] = logits.log_softmax(-1).gather(-1, ids[:, 2 + k, None]).squeeze(-1)
    torch.testing.assert_close(got, expected)


def test_left_to_right_is_the_law_of_left_to_right_sampling():
    model = Lookup(5, seed=9)
    completions = torch.tensor(list(itertools.product(range(3), repeat=3)))
    ids = torch.cat([torch.tensor(PROMPT).expand(27, 2), completions], dim=1)
    with torch.no_grad():
        probs = per_token_logps(model, ids, completion_length=3, estimator="left_to_right").sum(-1).exp()
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0))  # a distribution over the 27 completions
        settings = dict(gen_length=3, block_length=1, steps=3)
        samples = generate(model, torch.tensor([PROMPT]).repeat(20000, 1), temperature=1.0,
                           generator=torch.Generator().manual_seed(9), **settings)  # fmt: skip
    index = (samples[:, 2:] * torch.tensor([9, 3, 1])).sum(-1)  # completions are listed in base-3 order
    frequency = torch.bincount(index, minlength=27).double() / len(samples)
    bound = 4 * (probs.double() * (1 - probs.double()) / len(samples)).sqrt() + 1e-4
    assert ((frequency - probs.double()).abs() <= bound).all()


def test_greedy_left_to_right_decode_takes_each_step_mode():
    model = Lookup(5, seed=10)
    with torch.no_grad():
        decoded = generate(model, torch.tensor([PROMPT]), gen_length=3, block_length=1, steps=3)
        logps = per_token_logps(model, decoded, completion_length=3, estimator="left_to_right")[0]
    for k in range(3):
        step = decoded[0].tolist()[: 2 + k] + [MASK] * (3 - k)
        with torch.no_grad():
            best = model(torch.tensor([step])).logits[0, 2 + k].log_softmax(-1).max()
        assert math.isclose(float(logps[k]), float(best), abs_tol=1e-5)


@pytest.mark.parametrize("estimator", ["mc_elbo", "left_to_right"])
def test_gradients_flow(estimator):
    model = tiny_model(11)
    logps = per_token_logps(model, random_ids(11, 2, 12), completion_length=4, estimator=estimator,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert logps.shape == (2, 4) and logps.requires_grad
    (-logps.sum()).backward()
    assert model.model.transformer.blocks[0].q_proj.weight.grad.abs().sum() > 0


def hand_terms() -> ElboTerms:
    """Three samples of one sequence of T = 3 (completion mask 1, 1, 0); the third masks nothing real."""
    p = torch.tensor([[0.5, 0.2, 0.1], [0.4, 0.8, 0.3], [0.9, 0.9, 0.6]])
    masked = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    return ElboTerms(logps=p.log()[:, None], masked=masked[:, None], scored=masked[:, None],
                     weight=torch.tensor([[4 / 2], [4 / 2], [4.0]]))  # fmt: skip


def test_eubo_and_spg_elbo_by_hand():
    terms, completion_mask = hand_terms(), torch.tensor([[1, 1, 0]])
    # masked real tokens: row 1 {0} (t = 1/2), row 2 {1} (t = 1/2), row 3 none (left out, as SPG never draws it)
    # beta = 2: token 0: (0.5^2 / 0.5 + 0) / 2 = 0.25; token 1: (0 + 0.8^2 / 0.5) / 2 = 0.64; token 2: not real
    expected_eubo = (math.log(0.25) + math.log(0.64)) / 2 / 2
    torch.testing.assert_close(terms.eubo(2.0, completion_mask), torch.tensor([expected_eubo]))
    expected_elbo = (math.log(0.5) + math.log(0.8)) / 2  # each row's mean over its masked real tokens
    torch.testing.assert_close(terms.elbo_per_token_mean(completion_mask), torch.tensor([expected_elbo]))
    # the per-token ELBO: mean over the 3 rows of weight * log p on scored tokens
    expected = torch.tensor([2 * math.log(0.5), 2 * math.log(0.8), 2 * math.log(0.1 * 0.3) + 4 * math.log(0.6)]) / 3
    torch.testing.assert_close(terms.elbo()[0], expected)


def test_eubo_keeps_only_tokens_some_sample_masked():
    p = torch.tensor([[0.5, 0.2, 0.1]])
    terms = ElboTerms(logps=p.log()[:, None], masked=torch.tensor([[[1, 0, 0]]], dtype=torch.bool),
                      scored=torch.tensor([[[1, 0, 0]]], dtype=torch.bool), weight=torch.tensor([[4.0]]))  # fmt: skip
    # t = 1/3; token 0: 0.5 / (1/3) = 1.5, tokens 1, 2 never masked -> left out; beta = 1
    torch.testing.assert_close(terms.eubo(1.0, torch.ones(1, 3)), torch.tensor([math.log(1.5)]))


@pytest.mark.parametrize("estimator", ["mc_elbo", "left_to_right"])
def test_left_padded_rows_equal_rows_alone(estimator):
    model = tiny_model(12)
    rows = random_ids(12, 2, 10)
    padded = torch.cat([torch.full((2, 3), 48), rows], dim=1)
    attention_mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 10, dtype=torch.long)], dim=1)
    settings = dict(completion_length=4, p_mask_prompt=0.0, estimator=estimator, chunk_rows=3)
    with torch.no_grad():
        batch = per_token_logps(model, padded, attention_mask=attention_mask,
                                generator=torch.Generator().manual_seed(4), **settings)  # fmt: skip
        alone = per_token_logps(model, rows, generator=torch.Generator().manual_seed(4), **settings)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
