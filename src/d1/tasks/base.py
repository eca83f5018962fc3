"""The ``Task`` interface shared by d1's four benchmarks, plus small shared helpers."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RewardFunc = Callable[..., list[float]]

REASONING_PREFILL = "<reasoning>"
"""d1's eval appends this after the chat template's generation prompt."""

FORMAT_ONLY_SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""
"""``SYSTEM_PROMPT`` of d1's ``diffu-grpo/data_utils.py`` (RL prompts for GSM8K, MATH, Countdown)."""


@dataclass(frozen=True)
class ParsedAnswer:
    """One graded generation: what was extracted and d1's verdict.

    ``n_correct``/``n_total`` are the units d1 counts: 1/1 or 0/1 per question, cells for Sudoku.
    """

    extracted: Any
    correct: bool
    n_correct: int
    n_total: int = 1
    details: dict[str, Any] = field(default_factory=dict)


def check_utf8(path: str | Path) -> None:
    """Fail naming the file, line and byte when `path` is not UTF-8 text (read in chunks: any size)."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with Path(path).open("rb") as handle:
        while True:
            chunk, pending = handle.read(1 << 20), decoder.getstate()[0]
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                line += chunk.count(b"\n", 0, max(err.start - len(pending), 0))
                byte = (pending + chunk)[err.start]
                raise ValueError(
                    f"{path}: line {line} is not UTF-8 text (byte {byte:#04x}); save the file as UTF-8."
                ) from None
            if not chunk:
                return
            line += chunk.count(b"\n")


def _json(path: Path, text: str, first_line: int = 1) -> Any:
    """`json.loads(text)`; a syntax error names the file and line (`text` starts at line `first_line`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: line {first_line + err.lineno - 1} is not valid JSON ({err.msg} at column {err.colno}); "
            "fix or remove it."
        ) from None


def _row(path: Path, row: Any, where: str) -> dict[str, Any]:
    """`row` when it is a JSON object (one row's columns); otherwise an error naming `where` it is."""
    if not isinstance(row, dict):
        raise ValueError(
            f"{path}: {where} is {json.dumps(row)[:80]}, not a JSON object of one row's columns "
            '(e.g. {"question": "...", "answer": "..."}).'
        )
    return row


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.csv`` (all columns as strings), ``.jsonl``, ``.json`` or ``.parquet`` file; text that
    is not UTF-8, JSON syntax errors and rows that are not objects are errors naming the file and line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".json"):
        check_utf8(path)
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text, newline=""))]
    if suffix == ".jsonl":
        lines = enumerate(text.split("\n"), 1)
        return [_row(path, _json(path, line, n), f"line {n}") for n, line in lines if line.strip()]
    if suffix == ".json":
        data = _json(path, text)
        columns = list(data.values()) if isinstance(data, dict) else []
        if isinstance(data, dict) and all(isinstance(c, list) and len(c) == len(columns[0]) for c in columns):
            # column-oriented {"col": [...]} as pandas/HF write it
            return [dict(zip(data, values, strict=True)) for values in zip(*columns, strict=True)]
        if not isinstance(data, list):
            raise ValueError(
                f"{path}: expected a JSON list of rows or an object of equally long column lists, not "
                f"{json.dumps(data)[:80]}."
            )
        return [_row(path, row, f"item {i} of its list") for i, row in enumerate(data)]
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    raise ValueError(f"{path}: unsupported data file type {suffix!r} (use .csv, .jsonl, .json or .parquet)")


def load_hub_split(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a 🤗 Hub dataset split, loaded with ``datasets.load_dataset`` as d1 does."""
    from datasets import load_dataset

    dataset = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    return [dict(row) for row in dataset]


def completion_texts(completions: Sequence[Any]) -> list[str]:
    """Completion strings from TRL's chat format (``[{"content": ...}]`` per item) or plain strings."""
    texts = []
    for completion in completions:
        if isinstance(completion, str):
            texts.append(completion)
        elif isinstance(completion, dict):
            texts.append(str(completion["content"]))
        else:
            texts.append(str(completion[0]["content"]))
    return texts


def format_completion(reasoning: Sequence[str], answer: str) -> str:
    """d1's completion layout: ``<reasoning>`` with one line per reasoning step, then ``<answer>``."""
    thoughts = "".join(line + "\n" for line in reasoning)
    return "<reasoning>\n" + thoughts + "</reasoning>\n<answer>\n" + answer + "\n</answer>"


def first_tag_content(text: str, open_tag: str, close_tags: Sequence[str]) -> str | None:
    """``re.search(open + "(.*?)(?:" + "|".join(closes) + ")", text, re.DOTALL).group(1)`` in one pass.

    The regex retries every later ``open_tag`` when no close tag follows, which is quadratic on repeated
    unclosed tags; the first ``open_tag`` is the only candidate (a later one cannot see more close tags).
    """
    start = text.find(open_tag)
    if start < 0:
        return None
    body = start + len(open_tag)
    ends = [end for end in (text.find(close, body) for close in close_tags) if end >= 0]
    return text[body : min(ends)] if ends else None


def last_tag_content(text: str, open_tag: str, close_tag: str) -> str | None:
    """``re.findall(open + "(.*?)" + close, text, re.DOTALL)[-1]`` (``None`` if no match) in one pass."""
    last, pos = None, 0
    while (start := text.find(open_tag, pos)) >= 0:
        body = start + len(open_tag)
        end = text.find(close_tag, body)
        if end < 0:
            break
        last, pos = text[body:end], end + len(close_tag)
    return last


def subsample_indices(n_rows: int, subsample: int, seed: int) -> list[int]:
    """d1's eval subsample: ``np.random.choice(n, k, replace=False)`` right after ``np.random.seed(seed)``."""
    if subsample == -1:
        return list(range(n_rows))
    if not 0 <= subsample <= n_rows:
        raise ValueError(f"subsample={subsample} must be -1 or between 0 and the dataset size {n_rows}")
    return [int(i) for i in np.random.RandomState(seed).choice(n_rows, subsample, replace=False)]


def shuffle_and_hold_out(rows: list[dict[str, Any]], seed: int, holdout: int) -> list[dict[str, Any]]:
    """d1's RL training split: ``Dataset.shuffle(seed)``, then drop the last ``holdout`` rows."""
    from datasets import Dataset

    if not rows:
        return []
    shuffled = [dict(row) for row in Dataset.from_list(rows).shuffle(seed=seed)]
    return shuffled[: len(shuffled) - holdout] if holdout else shuffled


class Task:
    """One benchmark: d1's eval prompt, data loading, answer parsing and RL rewards.

    Subclasses set the class attributes and implement ``_test_rows``, ``_train_rows`` and ``parse``.
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    system_prompt: str = ""
    default_subsample: int = -1  # d1 eval.py's ``num_evals``
    train_holdout: int = 0  # rows d1 keeps out of RL training after shuffling
    few_shot_supported: bool = True
    reward_funcs: list[RewardFunc] = []
    default_reward_weights: list[float] = []

    def _test_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _train_rows(self, path: str | Path | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def eval_item(self, train_row: dict[str, Any]) -> dict[str, Any]:
        """A training row as an evaluation item ``{"question", "ground_truth"}``, so rows held out of RL
        training can score checkpoints the way the test set does (without touching the test set)."""
        raise NotImplementedError

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """Extract the answer from a generation and grade it exactly as d1's ``parse_and_get_acc``."""
        raise NotImplementedError

    def parse_many(
        self, texts: Sequence[str], ground_truths: Sequence[Any], questions: Sequence[str]
    ) -> list[ParsedAnswer]:
        """`parse` of many generations; a `ValueError` names the item (code tasks run them as one pool)."""
        parsed = []
        for index, (text, truth, question) in enumerate(zip(texts, ground_truths, questions, strict=True)):
            try:
                parsed.append(self.parse(text, truth, question))
            except ValueError as err:
                raise ValueError(f"generations[{index}] cannot be graded as {self.name}: {err}") from err
        return parsed

    def reference_completion(self, train_row: dict[str, Any]) -> str | None:
        """A reference solution of a training row as a completion that earns the task's full reward (the
        hints of IGPO's inpainting), or None when the task has none. Training only: never an eval input."""
        return None

    def load_test(self, path: str | Path | None = None, subsample: int = -1, seed: int = 42) -> list[dict]:
        """Test items ``{"question", "ground_truth"}`` from the Hub (``path=None``) or a local file.

        ``subsample`` > 0 draws d1's random subset (``default_subsample`` holds d1's choice per task).
        """
        rows = self._test_rows(path)
        return [rows[i] for i in subsample_indices(len(rows), subsample, seed)]

    def load_train(self, path: str | Path | None = None, seed: int | None = None) -> list[dict]:
        """RL rows as d1's ``data_utils`` builds them: ``prompt`` (chat messages) plus reward columns.

        With ``seed`` the rows are shuffled and ``train_holdout`` rows dropped, as d1's training script does.
        """
        rows = self._train_rows(path)
        return rows if seed is None else shuffle_and_hold_out(rows, seed, self.train_holdout)

    def build_messages(
        self,
        question: str,
        few_shot: int = 0,
        examples: Sequence[tuple[str, str]] | None = None,
        system_prompt: str | None = None,
    ) -> list[dict[str, str]]:
        """The single user message of d1's eval: system prompt, blank line, question.

        With ``few_shot`` > 0 the question is wrapped as d1 does; d1's GSM8K/Sudoku loaders never fill
        the examples, so ``examples=None`` reproduces their empty few-shot block. ``system_prompt``
        replaces d1's (``""``: the question alone, e.g. for tiny models that cannot afford long prompts).
        """
        if few_shot > 0 and self.few_shot_supported:
            shots = "\n\n".join(f"Question: {q}\nAnswer:\n{a}" for q, a in list(examples or [])[:few_shot])
            question = f"{shots}\n\nQuestion: {question}\nAnswer:\n"
        prefix = self.system_prompt if system_prompt is None else system_prompt
        return [{"role": "user", "content": f"{prefix}\n\n{question}" if prefix else question}]

    def build_prompt(
        self,
        tokenizer: Any,
        question: str,
        few_shot: int = 0,
        examples: Sequence[tuple[str, str]] | None = None,
        system_prompt: str | None = None,
    ) -> str:
        """Prompt text for generation: chat template with generation prompt, then ``<reasoning>``."""
        messages = self.build_messages(question, few_shot, examples, system_prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + REASONING_PREFILL

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
