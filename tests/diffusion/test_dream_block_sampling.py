"""Fast-dLLM's cached Dream sampler: Fast-dLLM's own tokens on the reference tiny Dream
(tests/fixtures/fastdllm_dream.json, made by make_fastdllm_dream.py), the block schedule worked by hand,
left padding, the trace, and bad settings refused before any forward pass."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

import d1
from d1.diffusion.dream_block_sampling import DreamBlockSampling, generate_dream_blocks
from d1.diffusion.trace import Trace
from d1.models.dream import DreamConfig, DreamModel
from tests.conftest import reference_path

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "fastdllm_dream.json").read_text())
MASK = 47


@pytest.fixture(scope="module")
def dream_tiny() -> DreamModel:
    return d1.load_model(reference_path("dream-tiny"), dtype="float32").eval()


@pytest.fixture(scope="module")
def peaky_dream() -> DreamModel:
    """A random native Dream whose head is scaled up, so that predictions are confident and differ by
    position: the threshold rule fires and float noise does not reorder candidates."""
    config = DreamConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, mask_token_id=MASK, pad_token_id=46,
        bos_token_id=45, eos_token_id=44, initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DreamModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
        model.lm_head.weight[MASK] = 0  # the mask token (logit 0) is not predicted: see MaskBiased for that
    return model


def prompt(length: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 44, (batch, length), generator=torch.Generator().manual_seed(seed))


def case_id(case: dict) -> str:
    return f"{case['mode']}-{case['cache']}-{len(case['prompt'])}x{len(case['prompt'][0])}"


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=case_id)
def test_matches_fastdllm_token_for_token(dream_tiny: DreamModel, case: dict) -> None:
    settings = FIXTURE["settings"]
    ids = torch.tensor(case["prompt"])
    stats: dict = {}
    out = generate_dream_blocks(
        dream_tiny, ids, gen_length=settings["gen_length"], block_length=settings["block_length"],
        steps=case["steps"], threshold=case["threshold"], cache=case["cache"], stats=stats,
    )  # fmt: skip
    assert out[:, ids.shape[1] :].tolist() == case["completion"]
    assert torch.equal(out[:, : ids.shape[1]], ids)
    if case["threshold"] is None:  # d1 skips the schedule's empty steps, upstream runs them
        assert stats["forward_passes"] <= case["forward_passes"]
    else:
        assert stats["forward_passes"] == case["forward_passes"]


def per_pass_counts(trace: Trace, block: int) -> list[int]:
    return [len(step.positions) for step in trace.rows[0].steps if step.block == block]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # t = linspace(1, 1e-3, 5); the refresh pass commits 1, then int(7 * (1 - .5005/.75025)) = 2,
        # int(5 * (1 - .25075/.5005)) = 2 and the last step the 3 left.
        (8, [1, 2, 2, 3]),
        # t = linspace(1, 1e-3, 9): 7 * (1 - .75025/.875125) = 0.999 -> 0 (pass skipped), then 7 * 0.166 -> 1,
        # 6 * 0.200, 5 * 0.250, 4 * 0.332, 3 * 0.498 -> 1 each, and the last step the 2 left.
        (16, [1, 1, 1, 1, 1, 1, 2]),
    ],
)
def test_step_schedule_worked_by_hand(peaky_dream: DreamModel, steps: int, expected: list[int]) -> None:
    trace, stats = Trace(), {}
    generate_dream_blocks(
        peaky_dream, prompt(6, 0), gen_length=16, block_length=8, steps=steps, trace=trace, stats=stats
    )
    assert [per_pass_counts(trace, b) for b in range(2)] == [expected, expected]
    assert stats == {"forward_passes": 2 * len(expected), "steps": 2 * len(expected)}


@pytest.mark.parametrize(("threshold", "per_block"), [(2.0, [1] * 8), (-1.0, [1, 7])])
def test_threshold_extremes(peaky_dream: DreamModel, threshold: float, per_block: list[int]) -> None:
    """Above every probability: one token a pass (the most probable); below: the whole rest at once."""
    trace = Trace()
    generate_dream_blocks(
        peaky_dream, prompt(6, 1), gen_length=16, block_length=8, threshold=threshold, trace=trace
    )
    assert [per_pass_counts(trace, b) for b in range(2)] == [per_block, per_block]


def test_threshold_commits_the_top_candidate_or_all_confident_ones(peaky_dream: DreamModel) -> None:
    """A pass after a block's first commits one candidate, or several, all with probability >= threshold."""
    trace = Trace()
    generate_dream_blocks(
        peaky_dream, prompt(6, 2), gen_length=16, block_length=8, threshold=0.5, trace=trace
    )
    steps = trace.rows[0].steps
    cached = [step for i, step in enumerate(steps) if i and steps[i - 1].block == step.block]
    assert any(len(step.positions) > 1 for step in cached), "the threshold never fired: weak test"
    for step in cached:
        assert len(step.positions) == 1 or min(step.confidences) >= 0.5


class MaskBiased(torch.nn.Module):
    """The peaky model with `bias` added to the mask token's logit everywhere."""

    def __init__(self, model: DreamModel, bias: float) -> None:
        super().__init__()
        self.model, self.config, self.bias = model, model.config, bias

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=False, cache_position=None):
        out = self.model(
            input_ids, attention_mask, cache=cache, use_cache=use_cache, cache_position=cache_position
        )
        out.logits[..., MASK] += self.bias
        return out


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_a_predicted_mask_token_is_predicted_again_without_it(peaky_dream: DreamModel, threshold) -> None:
    """Where every prediction is the mask token, the rows are predicted without it: the same tokens as a model
    whose mask logit is -inf, and the block finishes (Fast-dLLM's threshold mode would never end)."""
    run = dict(gen_length=16, block_length=8, steps=8, threshold=threshold)
    biased = generate_dream_blocks(MaskBiased(peaky_dream, 1e4), prompt(6, 7), **run)
    forbidden = generate_dream_blocks(MaskBiased(peaky_dream, -torch.inf), prompt(6, 7), **run)
    assert torch.equal(biased, forbidden) and not (biased == MASK).any()


CONFIGS = [
    dict(cache="dual"),
    dict(cache="prefix"),
    dict(cache=None),
    dict(cache="dual", threshold=0.5),
    dict(cache="prefix", threshold=0.5),
]


@pytest.mark.parametrize("options", CONFIGS, ids=str)
def test_padded_rows_equal_rows_alone(peaky_dream: DreamModel, options: dict) -> None:
    short, long = prompt(5, 3), prompt(9, 4)
    batch = torch.cat([torch.cat([torch.full((1, 4), 46), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    run = dict(gen_length=16, block_length=8, steps=8, **options)
    together = generate_dream_blocks(peaky_dream, batch, attention_mask=mask, **run)[:, 9:]
    assert torch.equal(together[0], generate_dream_blocks(peaky_dream, short, **run)[0, 5:])
    assert torch.equal(together[1], generate_dream_blocks(peaky_dream, long, **run)[0, 9:])


@pytest.mark.parametrize("options", CONFIGS, ids=str)
def test_trace_decides_each_position_once_and_matches_the_output(
    peaky_dream: DreamModel, options: dict
) -> None:
    trace, stats = Trace(), {}
    ids = prompt(6, 5, batch=2)
    out = generate_dream_blocks(
        peaky_dream, ids, gen_length=24, block_length=8, steps=12, trace=trace, stats=stats, **options
    )
    for b, row in enumerate(trace.rows):
        assert len(row.steps) == stats["forward_passes"]
        positions = [p for step in row.steps for p in step.positions]
        assert sorted(positions) == list(range(24))
        firsts = [step for i, step in enumerate(row.steps) if i == 0 or row.steps[i - 1].block != step.block]
        assert [(s.block, s.positions) for s in firsts] == [(0, [0]), (1, [8]), (2, [16])]
        for step in row.steps:
            assert all(p // 8 == step.block for p in step.positions)
            assert [int(out[b, 6 + p]) for p in step.positions] == step.tokens
    assert not (out == MASK).any()


def test_sampling_follows_the_generator(peaky_dream: DreamModel) -> None:
    run = dict(gen_length=16, block_length=8, steps=8, temperature=1.0, top_p=0.9, alg_temp=0.5)
    ids = prompt(6, 6, batch=3)
    first = generate_dream_blocks(peaky_dream, ids, generator=torch.Generator().manual_seed(1), **run)
    again = generate_dream_blocks(peaky_dream, ids, generator=torch.Generator().manual_seed(1), **run)
    other = generate_dream_blocks(peaky_dream, ids, generator=torch.Generator().manual_seed(2), **run)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not (first == MASK).any()


def test_function_defaults_are_the_options_defaults() -> None:
    parameters = inspect.signature(generate_dream_blocks).parameters
    for option in dataclasses.fields(DreamBlockSampling):
        assert parameters[option.name].default == option.default, option.name
        assert option.metadata.get("help"), option.name


class NoForward(torch.nn.Module):
    """A model whose forward pass fails: the checks must reject bad settings before reaching it."""

    config = DreamConfig(mask_token_id=MASK, num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                         num_key_value_heads=1)  # fmt: skip

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=False, cache_position=None):
        raise AssertionError("forward pass before the settings were checked")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(gen_length=30, block_length=8), "gen_length=30"),
        (dict(gen_length=32, block_length=8, steps=10), "steps=10"),
        (dict(gen_length=32, block_length=8, steps=4), "at least 2"),
        (dict(gen_length=0), "gen_length=0"),
        (dict(cache="full"), "cache='full'"),
        (dict(alg="origin"), "alg='origin'"),
        (dict(threshold=float("nan")), "threshold=nan"),
        (dict(threshold=0.9, alg_temp=0.5), "alg_temp=0.5"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_k=0), "top_k=0"),
        (dict(eps=0.0), "eps=0.0"),
        (dict(attention_mask=torch.ones(1, 3)), "attention_mask shape"),
    ],
)
def test_bad_settings_refused_before_any_forward(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace("[", r"\[")):
        generate_dream_blocks(NoForward(), prompt(4, 0), **options)


def test_cache_needs_a_model_taking_one() -> None:
    class Plain(NoForward):
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("forward pass before the settings were checked")

    with pytest.raises(ValueError, match="cache='dual' needs a model"):
        generate_dream_blocks(Plain(), prompt(4, 0), gen_length=8, block_length=8, steps=2)
