"""benchmarks/memory.py's core at a tiny shape (not timed): the restatement of d1's sampler and log-probs
agrees with d1.generate / per_token_logps, and one measured GRPO step runs for both variants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "memory.py"
spec = importlib.util.spec_from_file_location("memory_benchmark", PATH)
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
CPU = torch.device("cpu")
TINY = memory.SETTINGS["tiny"]


def test_temperature_zero_check_finds_identical_tokens_and_log_probs():
    assert memory.check_equal("tiny", TINY, CPU) == (True, 0.0)


def test_d1_restatement_in_float64_samples_the_same_tokens_as_ours_from_the_same_seed():
    """In float64 the restatement is LLaDA's sampler, whose random stream d1.generate keeps."""
    model = memory.build_model("tiny", CPU).eval()
    prompt = memory.prompts(model, TINY, CPU)
    lengths = {k: TINY[k] for k in ("gen_length", "block_length", "steps")}
    ours = memory.rollout("ours", model, prompt, TINY, 0.9, seed=3)
    theirs = memory.d1_generate(
        model, prompt, temperature=0.9, dtype=torch.float64, generator=torch.Generator().manual_seed(3), **lengths
    )
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, memory.rollout("ours", model, prompt, TINY, 0.0, seed=3))


def test_measure_runs_one_grpo_step_for_each_variant_and_reports_a_peak():
    for variant in memory.VARIANTS:
        result = memory.measure(variant, "tiny", TINY, CPU, temperature=0.9)
        assert result["peak_mib"] >= 0 and result["seconds"] > 0
