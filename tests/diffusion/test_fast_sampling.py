"""d1.generate's fast paths: exact mode against LLaDA's loop restatement, and the invariants of Fast-dLLM's
block KV cache (prefix, dual), parallel unmasking (threshold, factor, factor_strict; the `max_block_steps` cap
against a restatement of the capped loop) and early stop. Fast-dLLM's own tokens: test_fastdllm_fixture.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d1.diffusion.sampling import generate, parallel_unmask_count
from tests.diffusion.test_sampling import EOS, MASK, VOCAB, llada_reference, random_prompt, tiny_model

NO_MASK = torch.zeros(VOCAB).index_fill(0, torch.tensor([MASK]), -1e4)
"""A sampled [MASK] would stay masked (as in LLaDA); the invariant tests rule it out (finite: guidance-safe)."""


class Biased(nn.Module):
    """Wraps a native LLaDA (cache included): records every input and adds a fixed bias [VOCAB] to the logits."""

    def __init__(self, model: nn.Module, bias: torch.Tensor = NO_MASK):
        super().__init__()
        self.model, self.config, self.bias = model, model.config, bias
        self.inputs: list[torch.Tensor] = []

    def forward(
        self,
        input_ids,
        attention_mask=None,
        cache=None,
        use_cache=False,
        cache_position=None,
        logits_to_keep=0,
    ):
        self.inputs.append(input_ids.clone())
        out = self.model(
            input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            cache_position=cache_position,
            logits_to_keep=logits_to_keep,
        )
        return SimpleNamespace(logits=out.logits + self.bias, cache=out.cache)


class MaskedInput(nn.Module):
    """Lets the loop restatement (which calls `model(x)`) run a left-padded batch."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor):
        super().__init__()
        self.model, self.attention_mask = model, attention_mask

    def forward(self, input_ids: torch.Tensor):
        mask = self.attention_mask.repeat(input_ids.shape[0] // self.attention_mask.shape[0], 1)
        width = input_ids.shape[1] - mask.shape[1]
        return self.model(input_ids, attention_mask=torch.cat([mask, mask.new_ones(mask.shape[0], width)], 1))


CASES = [  # seed, n_kv_heads, batch, prompt_len, gen_length, block_length, steps, temperature, remasking, cfg, pad
    (100, 4, 4, 6, 32, 8, 32, 0.0, "low_confidence", 0.0, True),
    (101, 2, 3, 5, 24, 8, 12, 0.0, "low_confidence", 0.0, False),
    (102, 1, 2, 9, 16, 16, 7, 0.0, "low_confidence", 0.0, True),
    (103, 2, 5, 3, 40, 8, 20, 0.0, "low_confidence", 0.0, True),
    (104, 4, 1, 12, 16, 4, 16, 0.0, "low_confidence", 0.0, False),
    (105, 2, 3, 4, 24, 6, 28, 0.0, "low_confidence", 0.0, True),  # more steps than tokens: empty steps
    (106, 4, 2, 6, 16, 8, 8, 0.0, "low_confidence", 1.0, True),
    (107, 2, 3, 5, 16, 8, 8, 0.9, "low_confidence", 0.0, True),
    (108, 4, 2, 7, 12, 4, 6, 0.0, "random", 0.0, True),
    (109, 1, 2, 4, 16, 8, 10, 0.5, "random", 0.5, False),
]


@pytest.mark.parametrize("case", CASES)
def test_exact_mode_equals_llada_restatement(case):
    seed, n_kv_heads, batch, prompt_len, gen_length, block_length, steps, temperature, remasking, cfg, pad = (
        case
    )
    model = tiny_model(seed, n_kv_heads)
    prompt = random_prompt(seed, batch, prompt_len)
    attention_mask = torch.ones_like(prompt)
    if pad:
        attention_mask[0, : prompt_len // 2] = 0
        attention_mask[-1, :1] = 0
    settings = dict(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
        cfg_scale=cfg,
        remasking=remasking,
    )
    reference_model = MaskedInput(model, attention_mask)
    expected = llada_reference(
        reference_model, prompt, generator=torch.Generator().manual_seed(seed), **settings
    )
    out = generate(
        model,
        prompt,
        attention_mask=attention_mask,
        generator=torch.Generator().manual_seed(seed),
        **settings,
    )
    assert torch.equal(out, expected)


def decode_trace(
    model: Biased, prompt_len: int, gen_length: int, block_length: int, out: torch.Tensor
) -> list:
    """Per block, the block's tokens before each step and after the last, plus what came after the block
    at every step (None where the forward pass did not see it: dual cache)."""
    full_width = prompt_len + gen_length
    blocks: list[dict] = []
    for ids in model.inputs:
        if ids.shape[1] == full_width:
            first_masked = int((ids[:, prompt_len:] == MASK).any(0).nonzero()[0])
            start = prompt_len + first_masked // block_length * block_length
            if not blocks or blocks[-1]["start"] != start:
                blocks.append({"start": start, "states": [], "after": [], "full": ids})
            block, after = ids[:, start : start + block_length], ids[:, start + block_length :]
        else:
            block, after = ids[:, :block_length], ids[:, block_length:]
        blocks[-1]["states"].append(block)
        blocks[-1]["after"].append(after if after.shape[1] or ids.shape[1] == full_width else None)
    for n, entry in enumerate(blocks):
        following = blocks[n + 1]["full"] if n + 1 < len(blocks) else out
        entry["states"].append(following[:, entry["start"] : entry["start"] + block_length])
    return blocks


def check_blockwise_progress(
    blocks: list, prompt: torch.Tensor, step_cap: int, exactly_one: bool = False
) -> None:
    for entry in blocks:
        assert torch.equal(entry["full"][:, : prompt.shape[1]], prompt)
        assert not (entry["full"][:, prompt.shape[1] : entry["start"]] == MASK).any(), (
            "an earlier block has masks"
        )
        assert len(entry["states"]) - 1 <= step_cap
        for after in entry["after"]:
            assert after is None or (after == MASK).all(), "a later block was unmasked"
        states = entry["states"]
        for before, now in zip(states[:-1], states[1:], strict=True):
            changed = before != now
            assert (before[changed] == MASK).all(), "a decoded token changed"
            unmasked = (before == MASK).sum(1) - (now == MASK).sum(1)
            still_masked = (before == MASK).any(1)
            assert (unmasked[still_masked] >= 1).all(), "a step made no progress"
            if exactly_one:
                assert (unmasked[still_masked] == 1).all()
        assert not (states[-1] == MASK).any()


@pytest.mark.parametrize(
    "cache, unmask, threshold, temperature",
    [
        (None, "threshold", 0.3, 0.0),
        (None, "factor", 0.9, 0.0),
        ("prefix", "schedule", 0.9, 0.0),
        ("dual", "schedule", 0.9, 0.7),
        ("prefix", "threshold", 0.2, 0.0),
        ("dual", "threshold", 0.2, 0.0),
        ("dual", "factor", 0.9, 0.0),
    ],
)
def test_parallel_and_cached_decoding_stay_in_the_block_and_progress(cache, unmask, threshold, temperature):
    prompt_len, gen_length, block_length, steps = 5, 24, 8, 24
    model = Biased(tiny_model(7, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(7, 3, prompt_len)
    stats: dict = {}
    out = generate(
        model,
        prompt,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        cache=cache,
        unmask=unmask,
        threshold=threshold,
        factor=4.0,
        generator=torch.Generator().manual_seed(0),
        stats=stats,
    )
    blocks = decode_trace(model, prompt_len, gen_length, block_length, out)
    assert len(blocks) == gen_length // block_length and stats["forward_passes"] == len(model.inputs)
    check_blockwise_progress(blocks, prompt, steps // len(blocks))
    if unmask != "schedule":
        assert stats["forward_passes"] < steps, "nothing decoded in parallel"


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_threshold_above_one_unmasks_one_token_per_step(cache):
    prompt_len, gen_length, block_length = 4, 16, 8
    model = Biased(tiny_model(8, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(8, 2, prompt_len)
    stats: dict = {}
    out = generate(
        model, prompt, gen_length=gen_length, block_length=block_length, steps=gen_length,
        cache=cache, unmask="threshold", threshold=1.5, stats=stats,
    )  # fmt: skip
    assert stats == {"forward_passes": gen_length, "steps": gen_length, "block_passes": [8, 8]}
    blocks = decode_trace(model, prompt_len, gen_length, block_length, out)
    check_blockwise_progress(blocks, prompt, block_length, exactly_one=True)


@pytest.mark.parametrize("cache", [None, "dual"])
def test_steps_do_not_cap_parallel_unmasking_but_max_block_steps_does(cache):
    """As in Fast-dLLM, a block decodes until it is done whatever `steps` says; `max_block_steps` caps it."""
    model = Biased(tiny_model(9, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(9, 3, 5)
    settings = dict(gen_length=24, block_length=8, steps=3, cache=cache, unmask="threshold", threshold=2.0)
    stats: dict = {}
    out = generate(model, prompt, stats=stats, **settings)
    assert stats["block_passes"] == [8, 8, 8] and not (out == MASK).any()  # one token a step
    stats = {}
    out = generate(model, prompt, stats=stats, max_block_steps=3, **settings)
    assert stats["block_passes"] == [3, 3, 3] and not (out == MASK).any()  # 3 + 3 + 2 tokens a block


@torch.no_grad()
def capped_reference(model, prompt, *, gen_length, block_length, cap, unmask, threshold=0.9, factor=1.0):
    """The capped parallel loop restated per row (greedy, no cache): each of at most `cap` steps per block
    commits the c most confident masked block tokens, c = the rule's count (threshold: the first plus every
    one >= threshold; factor_strict: the longest run whose n-th reaches 1 - factor / (n + 1), at least one)
    raised to ceil(masked left / steps left)."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK)], dim=1)
    for start in range(prompt.shape[1], x.shape[1], block_length):
        for step in range(cap):
            if not (x[:, start : start + block_length] == MASK).any():
                break
            probs = F.softmax(model(x).logits.double(), dim=-1)
            for row in range(x.shape[0]):
                masked = (x[row, start : start + block_length] == MASK).nonzero().flatten() + start
                if len(masked) == 0:
                    continue
                confidence, token = probs[row, masked].max(dim=-1)
                order = confidence.argsort(descending=True)
                ranked = confidence[order].tolist()
                if unmask == "threshold":
                    count = 1 + sum(c >= threshold for c in ranked[1:])
                else:
                    count = 0
                    while count < len(ranked) and ranked[count] >= 1 - factor / (count + 2):
                        count += 1
                count = max(count, 1, -(-len(ranked) // (cap - step)))
                chosen = order[:count]
                x[row, masked[chosen]] = token[chosen]
    return x


@pytest.mark.parametrize(
    "unmask, threshold, factor, cap",
    [
        ("threshold", 0.6, 1.0, 2),
        ("threshold", 0.6, 1.0, 4),
        ("factor_strict", 0.9, 3.0, 2),
        ("factor_strict", 0.9, 1.0, 3),
    ],
)
def test_max_block_steps_is_the_capped_loop(unmask, threshold, factor, cap):
    """max_block_steps = steps // blocks is d1's earlier parallel decoding, restated independently."""
    model = Biased(tiny_model(15, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(15, 3, 5)
    options = dict(gen_length=24, block_length=8, unmask=unmask, threshold=threshold, factor=factor)
    expected = capped_reference(model, prompt, cap=cap, **options)
    stats: dict = {}
    out = generate(model, prompt, steps=3 * cap, max_block_steps=cap, stats=stats, **options)
    assert torch.equal(out, expected)
    assert all(passes <= cap for passes in stats["block_passes"]) and not (out == MASK).any()
    uncapped: dict = {}
    generate(model, prompt, steps=3 * cap, stats=uncapped, **options)
    assert max(uncapped["block_passes"]) > cap, "the cap never binds: the case tests nothing"


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("unmask", ["threshold", "factor", "factor_strict"])
def test_parallel_unmasking_takes_at_most_a_pass_per_masked_position(cache, unmask):
    """Each pass commits a token of every unfinished row, so a block takes at most its masked count of passes
    (threshold > 1: exactly that many); prefilled positions are not masked."""
    model = Biased(tiny_model(16, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(16, 2, 4)
    prefill = torch.full((2, 16), MASK)
    prefill[0, [0, 3, 9]] = torch.tensor([5, 6, 7])
    prefill[1, [1, 2, 4, 10]] = torch.tensor([5, 6, 7, 8])
    masked = [6, 7]  # per block, the most masked positions of any row
    settings = dict(gen_length=16, block_length=8, steps=2, cache=cache, unmask=unmask, prefill=prefill)
    for threshold in (0.2, 1.5):
        stats: dict = {}
        out = generate(model, prompt, threshold=threshold, factor=2.0, stats=stats, **settings)
        assert not (out == MASK).any() and torch.equal(out[:, 4:][prefill != MASK], prefill[prefill != MASK])
        assert all(p <= m for p, m in zip(stats["block_passes"], masked, strict=True)), stats
        if unmask == "threshold" and threshold > 1:
            assert stats["block_passes"] == masked


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_with_one_step_per_block_is_exact(cache):
    """Every step is a block's first step, a full forward: the cache changes nothing."""
    model = tiny_model(10, n_kv_heads=2)
    prompt = random_prompt(10, 3, 6)
    attention_mask = torch.ones_like(prompt)
    attention_mask[1, :2] = 0
    settings = dict(gen_length=24, block_length=4, steps=6, attention_mask=attention_mask)
    assert torch.equal(generate(model, prompt, cache=cache, **settings), generate(model, prompt, **settings))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_decoding_with_padding_and_guidance_finishes(cache):
    model = Biased(tiny_model(12, n_kv_heads=1))
    prompt = random_prompt(12, 3, 6)
    attention_mask = torch.ones_like(prompt)
    attention_mask[0, :3] = 0
    out = generate(
        model, prompt, attention_mask=attention_mask, gen_length=16, block_length=8, steps=16, cache=cache,
        cfg_scale=1.0, unmask="threshold", threshold=0.5,
    )  # fmt: skip
    assert torch.equal(out[:, :6], prompt) and not (out == MASK).any()


def test_early_stop_fills_eos_after_an_eos_block():
    bias = NO_MASK.clone()
    bias[EOS] = 20.0
    model = Biased(tiny_model(13), bias)
    prompt = random_prompt(13, 2, 4)
    stats: dict = {}
    out = generate(model, prompt, gen_length=32, block_length=8, steps=16, early_stop=True, stats=stats)
    assert stats["forward_passes"] == 4 and (out[:, 4:] == EOS).all()
    stats = {}
    generate(
        Biased(tiny_model(13)), prompt, gen_length=32, block_length=8, steps=16, early_stop=True, stats=stats
    )
    assert stats["forward_passes"] == 16


def test_early_stop_fills_only_finished_rows():
    model = Biased(tiny_model(14, init_std=0.5))
    prompt = random_prompt(14, 3, 4)
    settings = dict(gen_length=16, block_length=8, steps=8, cache="dual")
    plain = generate(model, prompt, **settings)
    stopped = generate(model, prompt, early_stop=True, **settings)
    for row in range(3):
        if plain[row, 11] == EOS:
            assert (stopped[row, 12:] == EOS).all() and torch.equal(stopped[row, :12], plain[row, :12])
        else:
            assert torch.equal(stopped[row], plain[row])


def test_parallel_unmask_count_rules():
    confidence = torch.tensor([[0.95, 0.2, 0.92, 0.5, 0.99], [0.1, 0.3, 0.2, 0.05, 0.0]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    assert parallel_unmask_count(confidence, candidates, "threshold", 0.9, 1.0).tolist() == [2, 1]
    # factor 1: the n-th most confident must reach 1 - 1 / (n + 1): 0.5, 0.667, 0.75, 0.8
    for unmask in ("factor", "factor_strict"):
        assert parallel_unmask_count(confidence, candidates, unmask, 0.9, 1.0).tolist() == [2, 1]
        assert parallel_unmask_count(confidence, candidates, unmask, 0.9, 10.0).tolist() == [4, 3]
    assert parallel_unmask_count(confidence, candidates & False, "threshold", 0.9, 1.0).tolist() == [0, 0]


def test_factor_rules_where_only_the_last_candidate_fails():
    """Fast-dLLM's `get_transfer_index_dynamic` commits all m candidates when the run of passing ones stops
    at the m-th (so the last two always go together); factor_strict stops the run there. Factor 1: the n-th
    must reach 0.5, 0.667, 0.75, 0.8 for n = 1..4 (Fast-dLLM: the first always passes)."""
    confidence = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],  # m = 3, the 3rd fails 0.75: Fast-dLLM all 3, strict 2
            [0.3, 0.1, 0.0, 0.0],  # m = 2, both fail: Fast-dLLM both, strict 1
            [0.05, 0.0, 0.0, 0.0],  # m = 1: 1
            [0.9, 0.3, 0.2, 0.1],  # m = 4, the 2nd fails 0.667: 1 (the run stops before the last)
            [0.9, 0.9, 0.9, 0.9],  # m = 0: none
        ],
        dtype=torch.float64,
    )
    candidates = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]).bool()
    counts = {
        unmask: parallel_unmask_count(confidence, candidates, unmask, 0.25, 1.0).tolist()
        for unmask in ("factor", "factor_strict", "threshold")
    }
    # threshold 0.25: the most confident plus every other one >= 0.25
    assert counts == {
        "factor": [3, 2, 1, 1, 0],
        "factor_strict": [2, 1, 1, 1, 0],
        "threshold": [2, 1, 1, 2, 0],
    }


class Uncached(nn.Module):
    config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS)

    def forward(self, input_ids, attention_mask=None):
        raise AssertionError("forward pass before validation")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cache="full"), "cache='full'"),
        (dict(unmask="greedy"), "unmask='greedy'"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(factor=0.0), "factor"),
        (dict(max_block_steps=2), "max_block_steps=2 caps parallel unmasking"),
        (dict(unmask="threshold", max_block_steps=0), "max_block_steps=0 must be a positive integer"),
        (dict(unmask="factor", max_block_steps=1.5), "max_block_steps=1.5 must be a positive integer"),
        (dict(cache="dual"), "needs a model whose forward takes `cache`"),
    ],
)
def test_bad_fast_settings_raise_before_any_forward(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(
            Uncached(), torch.zeros(2, 4, dtype=torch.long), gen_length=8, block_length=8, steps=8, **kwargs
        )


@pytest.mark.parametrize("cache", [None, "dual"])
def test_sync_done_joins_a_slower_process_until_its_block_is_done(cache):
    """Parallel unmasking runs until the block is done on every process (sharded weights need equal forward
    passes): a process done early joins with passes that change nothing; its tokens and steps stay its own."""
    model = Biased(tiny_model(17, n_kv_heads=2, init_std=0.5))
    prompt = random_prompt(17, 2, 4)
    settings = dict(gen_length=16, block_length=8, steps=2, cache=cache, unmask="threshold", threshold=0.3)
    alone_stats: dict = {}
    alone = generate(model, prompt, stats=alone_stats, **settings)
    peer, calls = 6, [0]  # the other process takes 6 passes in every block

    def sync_done(done: bool) -> bool:
        calls[0] += 1
        everyone = done and calls[0] > peer
        calls[0] = 0 if everyone else calls[0]
        return everyone

    model.inputs.clear()
    stats: dict = {}
    out = generate(model, prompt, stats=stats, sync_done=sync_done, **settings)
    assert max(alone_stats["block_passes"]) < peer, "this process is not the faster one: nothing to join"
    assert torch.equal(out, alone) and stats["steps"] == alone_stats["steps"]
    assert stats["block_passes"] == [peer, peer] and stats["forward_passes"] == len(model.inputs) == 2 * peer


@pytest.mark.parametrize("unmask", ["threshold", "factor"])
def test_committed_mask_predictions_end_a_block_after_block_length_passes(unmask):
    """A [MASK] prediction is committed and stays masked (as in LLaDA); Fast-dLLM, which loops until the
    block has no mask, would then never stop on greedy decoding. d1 ends the block after block_length passes."""
    bias = torch.zeros(VOCAB).index_fill(0, torch.tensor([MASK]), 50.0)
    model = Biased(tiny_model(18, n_kv_heads=2), bias)
    prompt = random_prompt(18, 2, 4)
    stats: dict = {}
    out = generate(model, prompt, gen_length=8, block_length=4, steps=2, unmask=unmask, stats=stats)
    assert stats["block_passes"] == [4, 4] and (out[:, 4:] == MASK).all()
