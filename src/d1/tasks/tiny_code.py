"""`tiny_code`: a CPU-sized code task the tiny models can learn. Each problem asks for ``f(x) = a*x + b`` from
two examples; its tests (AceCode's format: assert strings) check the examples and two unseen inputs, so only
the right formula earns the full code reward. Train and test problems use disjoint (a, b) pairs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from d1.tasks.acecode import AceCodeTask

SLOPES = (1, 2, 3)
OFFSETS = tuple(range(10))
SHOWN_INPUTS = tuple(range(10))
HIDDEN_INPUTS = (10, 13)

SYSTEM_PROMPT = "Answer with the Python function in one ```python code block."


def is_test_function(a: int, b: int) -> bool:
    """The (a, b) pairs reserved for test problems (6 of the 30), never drawn for training."""
    return (a + b) % 5 == 0


def formula(a: int, b: int) -> str:
    """``a * x + b`` in full (``1 * x + 0``): every solution has the same length, so a completion of exactly
    the reference's length can hold any of them."""
    return f"{a} * x + {b}"


def tiny_code_problem(a: int, b: int, shown: tuple[int, int]) -> dict[str, Any]:
    """One AceCode-format row: question (two examples), assert tests (examples + unseen inputs), solution."""
    question = f"Write f(x) with f({shown[0]}) == {a * shown[0] + b} and f({shown[1]}) == {a * shown[1] + b}."
    tests = [f"assert f({x}) == {a * x + b}" for x in (*shown, *HIDDEN_INPUTS)]
    return {"question": question, "test_cases": tests, "solution": f"def f(x):\n    return {formula(a, b)}"}


REFERENCE_LENGTH = len("```python\ndef f(x):\n    return 1 * x + 0\n```")
"""Characters (= tokens of the tiny models' character tokenizer) of every tiny_code reference completion."""


def make_tiny_code_problems(n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
    """`n` problems of `split` (functions disjoint between train and test), seeded by `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    pool = [(a, b) for a in SLOPES for b in OFFSETS if is_test_function(a, b) == (split == "test")]
    rng = random.Random(f"tiny_code-{split}-{seed}")
    problems = []
    for _ in range(n):
        a, b = rng.choice(pool)
        shown = tuple(sorted(rng.sample(SHOWN_INPUTS, 2)))
        problems.append(tiny_code_problem(a, b, shown))  # type: ignore[arg-type]
    return problems


class TinyCodeTask(AceCodeTask):
    """AceCode's format and rewards on the generated `f(x) = a*x + b` problems (local files only)."""

    name = "tiny_code"
    system_prompt = SYSTEM_PROMPT
    source = "d1 project: generated f(x) = a*x + b problems, ```python block"

    def _rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        if path is None:
            raise ValueError(
                "tiny_code: the problems are generated; `d1 data make tiny_code --output F.jsonl`."
            )
        return super()._rows(path)

    def train_messages(self, question: str) -> list[dict[str, str]]:
        """The instruction and question in one user turn (no system turn: tiny prompts stay short)."""
        return self.build_messages(question)


TASK = TinyCodeTask()
