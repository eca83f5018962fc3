"""Code tasks' shared pieces: code extraction from completions, test programs run in d1's sandbox (never in
this process), grading, DiffuCoder's code rewards, AceCode-format rows and the pass@k estimator.

Model-written code is only ever parsed (``ast.parse``, which runs nothing) or handed to
``d1.sandbox.run_programs``; a sandbox that cannot run raises ``SandboxUnavailable`` and nothing is scored.
"""

from __future__ import annotations

import ast
import json
import math
import secrets
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d1.tasks.base import ParsedAnswer, Task, completion_texts, load_hub_split, read_records

END_MARKERS = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|mdm_mask|>")
"""Special tokens that end a generation (d1 eval keeps them in the text by default)."""

COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ", "\n```")
"""Codex's HumanEval stop sequences (Chen et al. 2021), plus a closing fence: where the function body that
continues a completion-style prompt ends."""

PYTHON_TAGS = ("python", "py", "python3")
TIMEOUT_S = 10.0
"""Seconds one test program may run before the sandbox stops it (counted wrong)."""

DIFFUCODER_SYSTEM_PROMPT = "You are a helpful assistant."
"""The system prompt of DiffuCoder's coupled-GRPO recipe (apple/ml-diffucoder
recipes/config_coupled_code.yaml)."""

ACECODE_HUB = "TIGER-Lab/AceCode-87K"


# ---------------------------------------------------------------- extraction


def cut_at_end_marker(text: str) -> str:
    """`text` up to the first special end-of-generation token."""
    ends = [i for i in (text.find(marker) for marker in END_MARKERS) if i >= 0]
    return text[: min(ends)] if ends else text


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """``(language tag, code, closed)`` of each markdown code fence in order, in one pass: the text between
    successive ``` marks alternates outside/inside; the last inside part is unclosed when no fence follows."""
    parts = text.split("```")
    blocks = []
    for index in range(1, len(parts), 2):
        head, newline, body = parts[index].partition("\n")
        tag = head.strip().lower() if newline else ""
        code = body if newline else parts[index]
        blocks.append((tag, code, index < len(parts) - 1))
    return blocks


def extract_fenced_code(text: str) -> str | None:
    """The first closed ```python block (or, failing that, the first closed untagged one), else the code after
    an unclosed ```python opener (a generation cut by its length); None when the text has no such fence."""
    blocks = fenced_blocks(cut_at_end_marker(text))
    for wanted in (lambda tag: tag in PYTHON_TAGS, lambda tag: tag == ""):
        for tag, code, closed in blocks:
            if closed and wanted(tag):
                return code
    unclosed = [code for tag, code, closed in blocks if not closed and tag in PYTHON_TAGS]
    return unclosed[0] if unclosed else None


def continuation_code(prompt: str, text: str, stops: Sequence[str] = COMPLETION_STOPS) -> str:
    """The prompt's function completed by a completion-style generation: the prompt, then the generation up to
    the first end marker or top-level stop sequence (Codex's `COMPLETION_STOPS` by default)."""
    body = cut_at_end_marker(text)
    stops = [i for i in (body.find(stop) for stop in stops) if i >= 0]
    return prompt + (body[: min(stops)] if stops else body)


def defines(code: str, name: str) -> bool:
    """Whether `code` defines a top-level function `name` (read with ``ast.parse``; False when it does not
    parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body
    )


def chat_code(text: str, prompt: str = "", entry_point: str = "") -> str | None:
    """Code of a chat answer: its fenced block, else the text as a completion of `prompt` when one is given;
    a block that does not define `entry_point` (a bare body) is put under the prompt's signature."""
    code = extract_fenced_code(text)
    if code is None:
        return continuation_code(prompt, text) if prompt else None
    if prompt and entry_point and not defines(code, entry_point):
        return prompt + code
    return code


# ---------------------------------------------------------------- test programs and grading


def assert_program(code: str, tests: Sequence[str], imports: Sequence[str] = ()) -> str:
    """`imports`, the solution, then the assert statements: exits non-zero at the first failing test."""
    head = "".join(line + "\n" for line in imports)
    return f"{head}{code}\n\n" + "\n".join(tests) + "\n"


def run_tests(programs: Sequence[str], timeout_s: float = TIMEOUT_S) -> list[Any]:
    """Each program's `RunResult` from d1's sandbox pool (order kept); `SandboxUnavailable` propagates."""
    if not programs:
        return []
    from d1.sandbox import run_programs  # imported on first use: loading a task needs no sandbox

    return list(run_programs(list(programs), timeout_s=timeout_s))


def require_sandbox() -> None:
    """Run an empty program: `SandboxUnavailable` (saying what to install) now, before a model loads and
    generates, rather than at the first grading."""
    run_tests(["pass"])


def with_end_marker(program: str, marker: str) -> str:
    """`program`, then a line printing `marker`: the proof that it ran to its end (a solution that calls
    ``sys.exit(0)`` before the tests also exits with status 0)."""
    return f"{program}\nprint({marker!r}, flush=True)\n"


def graded(code: str | None, result: Any, marker: str) -> ParsedAnswer:
    """The verdict of one solution: correct when its test program exited cleanly after printing `marker`."""
    ran_to_end = result is not None and str(result.stdout).rstrip().endswith(marker)
    correct = code is not None and ran_to_end and bool(result.passed)
    details = {} if result is None else {"status": result.status, "stderr": str(result.stderr)[-500:]}
    return ParsedAnswer(extracted=code, correct=correct, n_correct=int(correct), details=details)


class CodeTask(Task):
    """A code benchmark: the generation's code plus the problem's tests run in the sandbox; pass or fail.

    Subclasses implement `solution_code` (how a protocol reads code from a generation) and `test_program`.
    """

    few_shot_supported = False
    timeout_s = TIMEOUT_S
    source = ""

    def load_test(self, path: str | Path | None = None, subsample: int = -1, seed: int = 42) -> list[dict]:
        """The test items (checked), then a check that the sandbox that grades them runs here."""
        items = super().load_test(path, subsample, seed)
        require_sandbox()
        return items

    def load_train(self, path: str | Path | None = None, seed: int | None = None) -> list[dict]:
        """The training rows (checked), then a check that the sandbox that rewards them runs here."""
        rows = super().load_train(path, seed)
        require_sandbox()
        return rows

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        """The code a generation proposes (None: no code, graded wrong without running anything)."""
        raise NotImplementedError

    def test_program(self, code: str, ground_truth: dict[str, Any]) -> str:
        """The program that exits with status 0 exactly when `code` passes the problem's tests."""
        raise NotImplementedError

    def build_prompt(
        self,
        tokenizer: Any,
        question: str,
        few_shot: int = 0,
        examples: Any = None,
        system_prompt: Any = None,
    ) -> str:
        """The chat messages through the model's chat template with the generation prompt (no prefill)."""
        messages = self.build_messages(question, system_prompt=system_prompt)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """Extract the code and run its tests in the sandbox (one program; `parse_many` runs a pool)."""
        return self.parse_many([text], [ground_truth], [question])[0]

    def parse_many(
        self, texts: Sequence[str], ground_truths: Sequence[Any], questions: Sequence[str]
    ) -> list[ParsedAnswer]:
        """Grade many generations with one call of the sandbox pool (only those with code run)."""
        truths = [self._truth(truth, index) for index, truth in enumerate(ground_truths)]
        codes = [self.solution_code(text, truth) for text, truth in zip(texts, truths, strict=True)]
        marker = "D1END" + secrets.token_hex(8)
        runnable = [i for i, code in enumerate(codes) if code is not None]
        programs = [with_end_marker(self.test_program(codes[i], truths[i]), marker) for i in runnable]
        results: list[Any] = [None] * len(codes)
        for i, result in zip(runnable, run_tests(programs, self.timeout_s), strict=True):
            results[i] = result
        return [graded(code, result, marker) for code, result in zip(codes, results, strict=True)]

    def _truth(self, ground_truth: Any, index: int) -> dict[str, Any]:
        if not isinstance(ground_truth, dict):
            raise ValueError(
                f"generations[{index}] cannot be graded as {self.name}: its ground_truth must be an object of "
                f"the problem's tests, not {ground_truth!r:.80}"
            )
        return ground_truth


# ---------------------------------------------------------------- DiffuCoder's rewards


def code_format_score(text: str) -> float:
    """DiffuCoder's code format reward of one completion: 1.0 for exactly one ```python block holding code
    that parses, 0.5 when it does not parse, 0.0 otherwise (prose before the block allowed, nothing but
    whitespace after it: DiffuCoder's pattern wants the text to end with the fence and a newline)."""
    body = cut_at_end_marker(text)
    blocks = fenced_blocks(body)
    if len(blocks) != 1 or not blocks[0][2] or blocks[0][0] != "python" or body.rsplit("```", 1)[1].strip():
        return 0.0
    head = body.split("```", 1)[1]
    if not head.startswith("python\n"):
        return 0.0
    try:
        ast.parse(blocks[0][1].strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0.5
    return 1.0


def _counting_program(code: str, tests: Sequence[str], nonce: str) -> str:
    """The solution, then each test in its own try block, printing ``nonce`` and the test's index when it
    passes (the nonce is drawn per call, so model code cannot print a pass it did not earn)."""
    lines = [code, "", "def _d1_passed(i):", f"    print({nonce!r}, i, flush=True)", ""]
    for index, test in enumerate(tests):
        lines += [
            "try:",
            textwrap.indent(test, "    "),
            f"    _d1_passed({index})",
            "except BaseException:",
            "    pass",
        ]
    return "\n".join(lines) + "\n"


def _passed_count(stdout: str, nonce: str, n_tests: int) -> int:
    """How many distinct test indices the counting program reported as passed."""
    passed = set()
    for line in str(stdout).splitlines():
        head, _, index = line.partition(" ")
        if head == nonce and index.strip().isdigit() and int(index) < n_tests:
            passed.add(int(index))
    return len(passed)


def pass_rates(
    codes: Sequence[str | None], tests: Sequence[Sequence[str]], timeout_s: float = TIMEOUT_S
) -> list[float]:
    """Fraction of each solution's tests that pass (None: 0.0, nothing run), all in one sandbox pool."""
    nonce = "D1PASS" + secrets.token_hex(8)
    runnable = [i for i, code in enumerate(codes) if code is not None and tests[i]]
    programs = [_counting_program(codes[i], tests[i], nonce) for i in runnable]  # type: ignore[arg-type]
    rates = [0.0] * len(codes)
    for i, result in zip(runnable, run_tests(programs, timeout_s), strict=True):
        rates[i] = _passed_count(result.stdout, nonce, len(tests[i])) / len(tests[i])
    return rates


def code_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """DiffuCoder's ``code`` reward: the FRACTION of the row's assert tests (``test_cases`` column) that pass,
    for completions whose format reward is 1 (one well-formed ```python block that parses); 0.0 otherwise.

    The code is the block's content. Passes are reported with a nonce drawn per call, so an early
    ``sys.exit(0)`` earns nothing (DiffuCoder's per-test exit status counts it as passing every test); code
    that reads its own program file could still find the nonce: the sandbox bounds what code can do, not
    what it claims. Unlike DiffuCoder (a process per test, 5 s each, in E2B) one sandbox run
    per completion runs every test in its own try block within `TIMEOUT_S`; a hang ends the run, and the
    tests not reported by then count as failed. A sandbox that cannot run raises `SandboxUnavailable`.
    """
    texts = completion_texts(completions)
    codes = [extract_fenced_code(text) if code_format_score(text) == 1.0 else None for text in texts]
    return pass_rates(codes, [list(tests) for tests in kwargs["test_cases"]], TIMEOUT_S)


def code_format_reward_func(
    prompts: list[Any], completions: list[Any], run_name: str | None = None, **kwargs: Any
) -> list[float]:
    """DiffuCoder's ``code_format`` reward per completion (:func:`code_format_score`); runs nothing."""
    return [code_format_score(text) for text in completion_texts(completions)]


CODE_REWARD_FUNCS = [code_reward_func, code_format_reward_func]
CODE_REWARD_WEIGHTS = [2.0, 0.5]
"""DiffuCoder's ``reward_weights`` (recipes/config_coupled_code.yaml)."""


# ---------------------------------------------------------------- AceCode-format rows


def string_list(value: Any) -> list[str]:
    """A column of strings as a list (a JSON list in a CSV cell, a parquet array; None: empty)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    return [str(item) for item in list(value) if str(item).strip()] if value is not None else []


def checked_tests(value: Any, source: str, index: int, column: str = "test_cases") -> list[str]:
    """A row's assert tests, refused (naming the file and row) when there are none or one does not parse
    (``ast.parse``: nothing runs)."""
    try:
        tests = string_list(value)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(
            f"{source}: row {index} column {column!r} is not a list of test strings ({err})."
        ) from None
    if not tests:
        raise ValueError(
            f"{source}: row {index} has no tests in column {column!r}; add assert tests or drop the row."
        )
    for number, test in enumerate(tests):
        try:
            ast.parse(test)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            raise ValueError(
                f"{source}: row {index} test {number} does not parse as Python ({err}): {test[:80]!r}; fix or "
                "drop the row."
            ) from None
    return tests


def acecode_rows(path: str | Path | None, hub_name: str = ACECODE_HUB) -> list[dict[str, Any]]:
    """``{"question", "test_cases"[, "solution"]}`` rows of an AceCode-format file (or the Hub set), every row
    checked before any is used."""
    source = str(path) if path is not None else hub_name
    rows = read_records(path) if path is not None else load_hub_split(hub_name, None, "train")
    out = []
    for index, row in enumerate(rows):
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{source}: row {index} needs a non-empty 'question' string.")
        item = {"question": question, "test_cases": checked_tests(row.get("test_cases"), source, index)}
        if isinstance(row.get("solution"), str):
            item["solution"] = row["solution"]
        out.append(item)
    return out


# ---------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021)'s unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, not n={n}, c={c}, k={k}.")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
