"""Block diffusion decoding (LLaDA 2.x, SDAR): the commit rule and the batched grid by hand, the official
samplers' tokens from their fixtures, and the cache and batching invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import d1
from d1.diffusion.block_diffusion import BlockDiffusionSampling, _canvas, _commit, generate_blocks
from d1.diffusion.samplers import BlockDiffusionOptions
from d1.diffusion.trace import Trace

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


# ---------------------------------------------------------------- against the official LLaDA 2.x sampler

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def llada2() -> tuple[torch.nn.Module, list[dict]]:
    """The tiny random LLaDA 2.x written by dFactory's class, and its official `generate` cases."""
    model = d1.load_model(FIXTURES / "llada2_tiny", dtype="float32").eval()
    return model, json.loads((FIXTURES / "llada2_tiny.json").read_text())["cases"]


def _settings(case: dict, cache: bool = True) -> BlockDiffusionSampling:
    s = case["settings"]
    return BlockDiffusionSampling(
        gen_length=s["gen_length"], block_length=s["block_length"], steps=s["steps"], threshold=s["threshold"],
        cache=cache,
    )  # fmt: skip


def _check_answer(answer: list[int], case: dict) -> None:
    """The official answer (cut at gen_length: its early return may run past it), then EOS to the end."""
    expected = case["generated"][: case["settings"]["gen_length"]]
    eos = case["settings"]["eos_id"]
    assert answer[: len(expected)] == expected
    assert all(token == eos for token in answer[len(expected) :])


def _run(model, prompts: list[list[int]], settings: BlockDiffusionSampling, stats: dict | None = None) -> list:
    """Answers of left-padded `prompts` in one batch."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = generate_blocks(model, ids, settings, mask_token_id=95, eos_token_id=94, attention_mask=mask, stats=stats)
    return out[:, width:].tolist()


def test_each_prompt_matches_the_official_sampler_cached_or_not(llada2) -> None:
    """72 official cases: thresholds 0.95 / 0.5 / 1.0 (never), blocks of 4 and 16, 16 or 32 tokens, prompts whose
    length is and is not a multiple of the block, EOS inside and past gen_length; the cache changes nothing,
    not even the number of passes."""
    model, cases = llada2
    stopped = 0
    for case in cases:
        cached, uncached = {}, {}
        answer = _run(model, [case["prompt"]], _settings(case), cached)[0]
        _check_answer(answer, case)
        assert _run(model, [case["prompt"]], _settings(case, cache=False), uncached)[0] == answer
        assert cached == uncached
        stopped += case["ends_at_eos"]
    assert stopped >= 10  # EOS stopping is exercised


def test_a_padded_batch_gives_each_prompt_its_official_answer(llada2) -> None:
    model, cases = llada2
    groups: dict[str, list[dict]] = {}
    for case in cases:
        groups.setdefault(json.dumps(case["settings"], sort_keys=True), []).append(case)
    assert max(map(len, groups.values())) == 3
    for group in groups.values():
        answers = _run(model, [case["prompt"] for case in group], _settings(group[0]))
        for answer, case in zip(answers, group, strict=True):
            _check_answer(answer, case)


def test_d1_generate_and_the_registry_run_it_on_a_block_diffusion_model(llada2) -> None:
    """`d1.generate` and `d1.sample` map d1's steps over the answer to steps per block; LLaDA-only options
    are refused."""
    model, cases = llada2
    case = next(c for c in cases if c["settings"]["block_length"] == 4 and c["settings"]["gen_length"] == 16)
    s = case["settings"]
    ids = torch.tensor([case["prompt"]])
    per_block_to_total = s["steps"] * s["gen_length"] // s["block_length"]
    common = {"gen_length": s["gen_length"], "block_length": s["block_length"], "unmask": "threshold",
              "threshold": s["threshold"]}  # fmt: skip
    out = d1.generate(model, ids, steps=per_block_to_total, **common)
    _check_answer(out[0, len(case["prompt"]) :].tolist(), case)
    options = BlockDiffusionOptions(diffusion_steps=per_block_to_total, **common)
    assert torch.equal(d1.sample(model, ids, options), out)
    with pytest.raises(ValueError, match="remasking"):
        d1.generate(model, ids, steps=per_block_to_total, remasking="random", **common)
    with pytest.raises(ValueError, match="unmask='factor'"):
        d1.generate(model, ids, steps=per_block_to_total, **{**common, "unmask": "factor"})


def test_trace_records_each_answer_position_once(llada2) -> None:
    model, cases = llada2
    case = next(c for c in cases if c["ends_at_eos"] and c["settings"]["block_length"] == 4)
    trace = Trace()
    generate_blocks(model, torch.tensor([case["prompt"]]), _settings(case), mask_token_id=95, eos_token_id=94,
                    trace=trace)  # fmt: skip
    row = trace.rows[0]
    decided = [p for step in row.steps for p in step.positions]
    assert len(decided) == len(set(decided))
    assert sorted(decided + row.filled) == list(range(case["settings"]["gen_length"]))
    assert [row.steps[row.decided_at()[i]].tokens[row.steps[row.decided_at()[i]].positions.index(i)]
            for i in range(len(case["generated"]))] == case["generated"]  # fmt: skip


def test_sampling_follows_the_generator(llada2) -> None:
    model, cases = llada2
    settings = BlockDiffusionSampling(gen_length=16, block_length=4, steps=4, temperature=1.0)
    ids = torch.tensor([cases[0]["prompt"]] * 2)
    runs = [
        generate_blocks(model, ids, settings, mask_token_id=95, eos_token_id=94,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for seed in (0, 0, 1)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_a_canvas_longer_than_the_context_is_refused(llada2) -> None:
    model, _ = llada2
    limit = model.config.max_position_embeddings
    ids = torch.ones(1, limit - 8, dtype=torch.long)
    with pytest.raises(ValueError, match=f"max_position_embeddings={limit}"):
        generate_blocks(model, ids, BlockDiffusionSampling(gen_length=16, block_length=4, steps=4), mask_token_id=95)


# ---------------------------------------------------------------- against SDAR's official sampler


def _sdar_settings(case: dict) -> BlockDiffusionSampling:
    s = case["settings"]
    dynamic = s["remasking_strategy"] == "low_confidence_dynamic"
    return BlockDiffusionSampling(gen_length=s["gen_length"], block_length=s["block_length"],
                                  steps=s["denoising_steps"], threshold=s["confidence_threshold"] if dynamic else None)  # fmt: skip


def test_sdar_matches_its_official_sampler_where_the_official_commits_masks_only() -> None:
    """SDAR's `block_diffusion_generate` (dynamic threshold 0.85 / 0.5 and static, blocks of 4 and 8, with and
    without a stop id). Its `topk` also picks unmasked positions when a step's quota exceeds the masks left and
    overwrites them, prompt tokens included (the 8 cases with `overwrites`); d1 commits masked positions only,
    as LLaDA 2.x's sampler does, so those cases are checked up to the first overwritten answer position."""
    model = d1.load_model(FIXTURES / "sdar_tiny", dtype="float32").eval()
    fixture = json.loads((FIXTURES / "sdar_tiny.json").read_text())
    compared = 0
    for case in fixture["cases"]:
        stop = case["settings"]["stopping_criteria_idx"]
        eos = stop[0] if stop else None
        prompt, gen_length = case["prompt"], case["settings"]["gen_length"]
        official = case["output"][len(prompt) : len(prompt) + gen_length]
        if eos in official:
            official = official[: official.index(eos) + 1]
        first_overwrite = min([p - len(prompt) for p, _, _ in case["overwrites"]], default=len(official))
        if first_overwrite < 0:
            continue  # the official run rewrote its prompt
        out = generate_blocks(model, torch.tensor([prompt]), _sdar_settings(case), mask_token_id=95,
                              eos_token_id=eos)[0, len(prompt) :].tolist()  # fmt: skip
        assert out[:first_overwrite] == official[:first_overwrite]
        if not case["overwrites"]:
            assert out[: len(official)] == official and all(t == eos for t in out[len(official) :])
            compared += 1
    assert compared >= 25
