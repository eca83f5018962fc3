"""Filters and the metric of d1's lm-eval code tasks: lm-eval's humaneval/mbpp layouts, with every test
program run in `d1.sandbox` instead of HF evaluate's in-process `code_eval` (which needs
``HF_ALLOW_CODE_EVAL=1``). Loaded by lm-eval from the YAMLs beside this file (`!function sandboxed.*`)."""

from __future__ import annotations

from typing import Any

from d1.tasks.code import assert_program, cut_at_end_marker, run_tests, with_end_marker
from d1.tasks.code_protocols import MBPP_SHOTS


def build_predictions(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """HumanEval completion: the prompt followed by each generation (lm-eval's `build_predictions`)."""
    return [
        [doc["prompt"] + cut_at_end_marker(r) for r in resp] for resp, doc in zip(resps, docs, strict=True)
    ]


def build_predictions_instruct(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """HumanEval instruct: the prompt (prefilled in the answer) then the generation up to its closing fence."""
    return [
        [doc["prompt"] + cut_at_end_marker(r).split("```")[0] for r in resp]
        for resp, doc in zip(resps, docs, strict=True)
    ]


def list_fewshot_samples() -> list[dict[str, Any]]:
    """MBPP's tasks 2-4 (the shots of LLaDA's and lm-eval's MBPP prompts) as lm-eval few-shot documents."""
    return [
        {"text": text, "code": code, "test_list": list(tests), "is_fewshot": True}
        for text, tests, code in MBPP_SHOTS
    ]


def pass_at_1(references: str | list[str], predictions: str | list[Any]) -> float:
    """1.0 when the first prediction followed by the test code (`references`) runs to its end in the sandbox."""
    reference = references[0] if isinstance(references, list) else references
    prediction = predictions[0]
    code = prediction[0] if isinstance(prediction, list) else prediction
    marker = "D1END-lm-eval"
    (result,) = run_tests([with_end_marker(assert_program(code, [reference]), marker)])
    return float(result.passed and str(result.stdout).rstrip().endswith(marker))
