"""(a) SFT with 2 CPU processes (gloo, configs/accelerate/cpu.yaml) trains on the same global batches as one
process: identical loss curve and weights.

One process with twice the per-device batch (8) sees the same 8 rows per step as 2 processes x 4 (accelerate
hands process i the i-th slice of each global batch, from one seeded order), and the loss normalisation is
the same here (all rows have the same prompt length). The one thing that differs is the masking noise: the
collator seeds it from the rows of each collator call, so one call on 8 rows draws other noise than two
calls on 4. The 1-process run therefore noises each half of its batch as one collator call (the test's
`HalvesCollator`), after which the runs must agree to float rounding. A wrong global batch (each process
taking the same rows, or all 8) changes the loss by far more than the tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import d1.sft.run
from d1.sft.collator import MaskedDiffusionCollator
from tests.sft.test_sft_run import config_of, sft_argv

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu.yaml"
STEPS = 4


class HalvesCollator(MaskedDiffusionCollator):
    """Noises each half of a batch as its own collator call, as two processes with half the batch do."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        half = len(features) // 2
        a, b = super().__call__(features[:half]), super().__call__(features[half:])
        out = {k: torch.cat([a[k], b[k]]) for k in ("input_ids", "labels", "t")}
        out["num_completion_tokens"] = a["num_completion_tokens"] + b["num_completion_tokens"]
        return out


def losses(log_history: list[dict]) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


@pytest.mark.slow
def test_two_processes_match_one_with_twice_the_batch(
    tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch
) -> None:
    common = (
        "--max_steps",
        str(STEPS),
        "--gradient_accumulation_steps",
        "1",
        "--lr_scheduler_type",
        "constant",
    )
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", "0", "-m", "d1", "sft",
        *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "two", *common, "--batch_size", "4"),
    ]  # fmt: skip
    result = subprocess.run(
        launch, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two_state = json.loads(
        (tmp_path / "two" / "run" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text()
    )
    two = losses(two_state["log_history"])

    monkeypatch.setattr(d1.sft.run, "MaskedDiffusionCollator", HalvesCollator)
    one = losses(
        d1.sft.run.run_sft(
            config_of(
                *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "one", *common, "--batch_size", "8")
            )
        ).state.log_history
    )
    monkeypatch.undo()
    plain = losses(
        d1.sft.run.run_sft(
            config_of(
                *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "plain", *common, "--batch_size", "8")
            )
        ).state.log_history
    )
    print(f"2 processes x 4: {two}\n1 process x 8 (same noise): {one}\n1 process x 8 (own noise): {plain}")
    assert len(one) == len(two) == STEPS
    assert one == pytest.approx(two, rel=1e-4, abs=1e-4)
    wa = load_file(tmp_path / "one" / "run" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "run" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    # Same rows, other noise: the first step (same weights) differs only by the masking draw
    assert plain[0] != pytest.approx(two[0], rel=1e-4)
