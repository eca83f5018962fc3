"""benchmarks/numerics.py (README, reproducibility): the thread count leaves the model's logits and gradients
bit for bit unchanged, and the table names the CPU kernels of every setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "numerics.py"


@pytest.mark.slow
def test_thread_count_leaves_logits_and_gradients_bitwise_equal(tiny_model_dir) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    by_threads = {(r[0].strip("| "), r[1]): r for r in rows[1:]}
    native = rows[1][1]
    for threads in ("1", "2", "8"):
        assert by_threads[threads, native][2:] == ["True", "0.0e+00", "True", "0.0e+00 |"]
    assert len(rows) == 5  # the header and the four settings, AVX2 kernels forced in the last
