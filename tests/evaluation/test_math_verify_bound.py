"""The MathVerify column bounded in size and time: caps, per-item timeout in any thread, restarts, no leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d1.evaluation.math_verify_bound import (
    MAX_BRACE_DEPTH,
    MAX_CHARS,
    MathVerifyJudge,
    brace_depth,
    within_caps,
)
from d1.evaluation.score import score_paths
from tests.conftest import reference_path

POWER_TOWER = r"\boxed{9^{9^{9}}}"  # sympy evaluates 9**387420489: minutes, holding the GIL
NESTED_150 = r"\boxed{" + r"\frac{1}{" * 150 + "2" + "}" * 150 + "}"  # math_verify used to read 1/2
# Indices of the items of d1's MATH500 reference file that math_verify accepted before the bounds.
REFERENCE_ACCEPTED = [1, 2, 4, 11, 12, 13, 14, 16, 19, 20, 23, 24, 28, 36, 37, 40, 45, 46, 49, 51, 53, 54,
                      60, 61, 64, 66, 67, 68, 73, 75]  # fmt: skip


def _math_file(tmp_path: Path, pairs: list[tuple[str, str]]) -> Path:
    path = tmp_path / "math500_x_256_128_0_generations.json"
    items = [{"question": "q", "generations": gen, "ground_truth": truth} for gen, truth in pairs]
    path.write_text(json.dumps({"generations": items}))
    return path


def _worker_children() -> list[str]:
    """Command lines of this process's live or zombie children that are math_verify workers."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and ("math_verify_bound" in cmdline or fields[0] == "Z"):
            children.append(f"{fields[0]} {cmdline}")
    return children


def test_brace_depth_and_caps() -> None:
    assert brace_depth("") == 0
    assert brace_depth(r"\frac{1}{2}") == 1
    assert brace_depth("{{}}{") == 2
    assert brace_depth("}}}{") == 1  # unmatched closers do not go below zero
    assert within_caps("{" * MAX_BRACE_DEPTH + "}" * MAX_BRACE_DEPTH)
    assert not within_caps("{" * (MAX_BRACE_DEPTH + 1))
    assert within_caps("1" * MAX_CHARS) and not within_caps("1" * (MAX_CHARS + 1))
    with pytest.raises(ValueError, match="timeout_s=0"):
        MathVerifyJudge(timeout_s=0)


def test_nested_frac_is_wrong_without_parsing(tmp_path: Path) -> None:
    path = _math_file(tmp_path, [(NESTED_150, r"\frac{1}{2}"), ("x" * (MAX_CHARS + 1) + r"\boxed{2}", "2")])
    items = score_paths([path])["math500_x_256_128"].items
    assert [item.math_verify_correct for item in items] == [False, False]
    assert [item.correct for item in items] == [False, True]  # d1's is_equiv rejects the nested one too


_THREADED_RUN = """
import json, sys, threading, time
from d1.evaluation.math_verify_bound import MathVerifyJudge
out = {}
def work():
    with MathVerifyJudge(timeout_s=2) as judge:
        judge.judge_many([("\\boxed{1}", "1")])  # the worker started and warm
        start = time.perf_counter()
        out["verdicts"] = judge.judge_many(json.loads(sys.argv[1]))
        out["seconds"], out["restarts"] = time.perf_counter() - start, judge.restarts
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps(out))
"""


def test_timeout_off_main_thread_restarts_worker() -> None:
    # In a child interpreter, so that a regression (a hang holding the GIL) fails instead of freezing the suite.
    pairs = [(POWER_TOWER, "1"), (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"), (r"\boxed{3}", "4")]
    run = [sys.executable, "-c", _THREADED_RUN, json.dumps(pairs)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["verdicts"] == [False, True, False]  # the tower timed out; the items after it still scored
    assert out["restarts"] == 1
    assert out["seconds"] < 2 + 30  # the timeout plus a generous restart on a loaded machine


def test_reference_verdicts_unchanged_and_no_worker_left() -> None:
    path = reference_path("d1-generations", "math500_instruct_256_128_0_generations.json")
    items = score_paths([path])["math500_instruct_256_128"].items
    assert [i for i, item in enumerate(items) if item.math_verify_correct] == REFERENCE_ACCEPTED
    if Path("/proc/self/stat").exists():
        assert _worker_children() == []
