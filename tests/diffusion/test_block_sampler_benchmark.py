"""benchmarks/block_sampler.py's core at its quick shape (not timed): every mode decodes the official loop's
tokens (the cache is exact), batched modes take fewer passes than one prompt at a time, and the table prints."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "block_sampler.py"
spec = importlib.util.spec_from_file_location("block_sampler_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_every_mode_agrees_with_the_official_loop() -> None:
    model = bench.build_model("quick", torch.device("cpu"), sharpen=100.0)
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()
    for threshold in (1.0, 0.9):
        settings = bench.BlockDiffusionSampling(gen_length=16, block_length=4, steps=4, threshold=threshold)
        results = bench.measure(model, prompts, mask, settings, repeats=1)
        reference, *others = results.values()
        assert all(torch.equal(r["tokens"], reference["tokens"]) for r in others)
        assert all(r["passes"] < reference["passes"] for r in others)


def test_the_script_prints_its_table() -> None:
    out = subprocess.run([sys.executable, str(PATH), "--quick", "--thresholds", "0.9"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 0.9 |")]
    assert len(rows) == 3 and all(line.split("|")[6].strip() == "100.0" for line in rows)
