"""d1.generate against Fast-dLLM's own LLaDA samplers (`llada/generate.py`): every case of
tests/fixtures/fastdllm_llada.json (made by tests/fixtures/make_fastdllm_llada.py from Fast-dLLM's code on the
tiny reference checkpoint) token for token, with Fast-dLLM's forward-pass count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d1.diffusion.sampling import generate
from tests.conftest import reference_path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fastdllm_llada.json"
DATA = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"cases": []}
RUNNABLE = [case for case in DATA["cases"] if "error" not in case]


def case_id(case: dict) -> str:
    rule = case["unmask"] + (f"{case['threshold'] or case['factor']}" if case["unmask"] != "schedule" else "")
    sampled = "" if case["temperature"] == 0 and case["remasking"] == "low_confidence" else "-sampled"
    return f"p{case['prompt']}-{case['cache'] or 'nocache'}-{rule}-s{case['steps']}{sampled}"


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModel

    import d1.models.llada  # noqa: F401  (registers model_type llada with AutoModel)

    return AutoModel.from_pretrained(str(reference_path("llada-tiny"))).eval()


def decode(model, case: dict, unmask: str | None = None) -> tuple[list, int]:
    """d1's completion tokens and forward passes for a fixture case (`unmask` overrides the case's rule)."""
    prompt = torch.tensor(DATA["prompts"][case["prompt"]])
    rule = {key: case[key] for key in ("threshold", "factor") if case[key] is not None}
    stats: dict = {}
    out = generate(
        model, prompt, gen_length=DATA["gen_length"], block_length=DATA["block_length"], steps=case["steps"],
        temperature=case["temperature"], remasking=case["remasking"], cache=case["cache"],
        unmask=unmask or case["unmask"], generator=torch.Generator().manual_seed(DATA["seed"]), stats=stats,
        **rule,
    )  # fmt: skip
    return out[:, prompt.shape[1] :].tolist(), stats["forward_passes"]


def test_fixture_is_present_and_covers_the_rules():
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} is absent (it is committed; regenerate it with make_fastdllm_llada.py)")
    assert DATA["source"] == "NVlabs/Fast-dLLM" and len(DATA["commit"]) == 40
    covered = {(case["cache"], case["unmask"]) for case in RUNNABLE}
    assert covered == {(c, u) for c in (None, "prefix", "dual") for u in ("schedule", "threshold", "factor")}
    assert sum(case["last_fails_taken"] or 0 for case in RUNNABLE) > 0, (
        "factor's last-fails branch never taken"
    )
    several = [case for case in RUNNABLE if case["unmask"] != "schedule" and case["nfe"] < 32]
    assert several, "no case commits several tokens in a step"


@pytest.mark.parametrize("case", RUNNABLE, ids=[case_id(case) for case in RUNNABLE])
def test_generate_reproduces_fastdllm(model, case):
    assert decode(model, case) == (case["output"], case["nfe"])


def test_factor_strict_differs_from_fastdllm_only_where_the_last_fails_branch_was_taken(model):
    greedy = [
        case for case in RUNNABLE if case["unmask"] == "factor" and case["last_fails_taken"] is not None
    ]
    differs = [decode(model, case, "factor_strict") != (case["output"], case["nfe"]) for case in greedy]
    for case, different in zip(greedy, differs, strict=True):
        assert not different or case["last_fails_taken"] > 0, case_id(case)
    assert any(differs)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_batch_rows_decode_as_alone_where_fastdllm_factor_crashes(model, cache):
    """Fast-dLLM's factor rule raises IndexError once one row of a batch finishes its block before another
    (`threshs[0] = -1` on an empty list; e.g. these two prompts with factor 2); d1 lets the finished row wait,
    so each row decodes as it would alone (Fast-dLLM's batch-wide loop: the pass count is the slowest row's)."""
    prompt = torch.tensor([[41, 25, 8, 14, 37, 13], [21, 3, 43, 56, 2, 49]])
    settings = dict(gen_length=16, block_length=8, steps=4, cache=cache, unmask="factor", factor=2.0)
    stats: list[dict] = [{}, {}, {}]
    batched = generate(model, prompt, stats=stats[2], **settings)
    alone = [generate(model, prompt[row : row + 1], stats=stats[row], **settings) for row in (0, 1)]
    assert torch.equal(batched, torch.cat(alone))
    assert stats[0]["block_passes"] != stats[1]["block_passes"], "the rows finish together: nothing tested"
    first, second = (s["block_passes"] for s in stats[:2])
    assert stats[2]["block_passes"] == [max(a, b) for a, b in zip(first, second, strict=True)]
