"""Traces of `generate`: every generated position decided once, by a step of its own block, with the token the
output holds and the model's probability of it; as many steps as `stats` counts; the JSON form versioned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d1.diffusion.sampling import generate, num_transfer_tokens
from d1.diffusion.trace import TRACE_FORMAT, TRACE_VERSION, Trace, check_version, row_from_dict
from tests.diffusion.test_fast_sampling import Biased
from tests.diffusion.test_sampling import EOS, MASK, random_prompt, tiny_model

SETUPS = [
    {},  # exact, LLaDA's schedule
    {"remasking": "random", "temperature": 0.7},
    {"cache": "prefix"},
    {"cache": "dual", "unmask": "threshold", "threshold": 0.05},
    {"unmask": "factor", "temperature": 0.5},
    {"early_stop": True, "eos_token_id": EOS},
]


def _generate(model, prompt, **kwargs) -> tuple[torch.Tensor, Trace, dict]:
    trace, stats = Trace(), {}
    settings = {"gen_length": 16, "block_length": 8, "steps": 8, **kwargs}
    out = generate(model, prompt, generator=torch.Generator().manual_seed(3), trace=trace, stats=stats, **settings)
    return out, trace, stats


@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "exact")
def test_every_position_is_decided_once_by_a_step_of_its_block(setup) -> None:
    model = Biased(tiny_model(5))
    if setup.get("early_stop"):  # EOS likely, so that the early stop fills something
        model.bias = model.bias.clone().index_fill(0, torch.tensor([EOS]), 3.0)
    prompt = random_prompt(1, 3, 5)
    out, trace, stats = _generate(model, prompt, **setup)
    assert len(trace.rows) == 3
    for b, row in enumerate(trace.rows):
        assert len(row.steps) == stats["steps"] == stats["forward_passes"]
        decided = [p for step in row.steps for p in step.positions] + row.filled
        assert sorted(decided) == list(range(16))  # each position exactly once
        for step in row.steps:
            assert all(step.block * 8 <= p < (step.block + 1) * 8 for p in step.positions)
            assert all(0.0 <= c <= 1.0 for c in step.confidences)
            assert [int(out[b, 5 + p]) for p in step.positions] == step.tokens
        assert all(int(out[b, 5 + p]) == EOS == row.fill_token for p in row.filled)
        assert row.decided_at().count(-1) == 0
    if setup.get("early_stop"):
        assert any(row.filled for row in trace.rows)
    plain = generate(
        model, prompt, gen_length=16, block_length=8, steps=8, generator=torch.Generator().manual_seed(3), **setup
    )
    assert torch.equal(plain, out)  # tracing changes nothing


def test_schedule_steps_decide_llada_counts_and_confidence_is_the_model_probability() -> None:
    model = tiny_model(7)
    prompt = random_prompt(2, 1, 4)
    for remasking in ("low_confidence", "random"):
        out, trace, _ = _generate(model, prompt, remasking=remasking)
        row = trace.rows[0]
        expected = num_transfer_tokens(torch.ones(1, 8, dtype=torch.bool), 4)[0].tolist() * 2
        assert [len(step.positions) for step in row.steps] == expected
        x = torch.cat([prompt, torch.full((1, 16), MASK)], dim=1)
        with torch.no_grad():  # the first step sees the fully masked answer
            probs = F.softmax(model(x).logits.double(), dim=-1)[0]
        first = row.steps[0]
        want = [float(probs[4 + p, t]) for p, t in zip(first.positions, first.tokens, strict=True)]
        assert first.confidences == pytest.approx(want, rel=1e-6)


def test_json_form_round_trips_and_other_versions_are_refused() -> None:
    _, trace, _ = _generate(tiny_model(5), random_prompt(1, 1, 5))
    row = trace.rows[0]
    assert row_from_dict(row.to_dict()) == row
    check_version({"format": TRACE_FORMAT, "version": TRACE_VERSION}, "x.json")
    with pytest.raises(ValueError, match=r"x.json is a d1 trace of version 99; this d1 reads version 1"):
        check_version({"format": TRACE_FORMAT, "version": 99}, "x.json")
    with pytest.raises(ValueError, match="x.json is not a d1 trace file"):
        check_version({"generations": []}, "x.json")
    with pytest.raises(ValueError, match="item 0 is not a d1 trace record.*steps"):
        row_from_dict({"gen_length": 16, "block_length": 8}, "item 0")
