"""Score d1 generation files (``{task}_{model}_{len}_{steps}_{rank}_generations.json``) like d1's parser.

Accuracy, correct and total are exactly those of d1's ``eval/parse_and_get_acc.py``. Effective tokens
are an approximation: d1 counts ``tiktoken`` ``cl100k_base`` tokens of the generation with
``<|endoftext|>`` removed; that encoding is downloaded at run time, so here we count the pieces of
cl100k's own pre-tokenisation regex instead (each piece is at least one cl100k token; common words
are exactly one), which needs no download. As in d1, Sudoku's average is ``8 * tokens / empty cells``.
MATH500 setups also get ``math_verify_accuracy`` from the ``math_verify`` package, as a separate column,
bounded in size and time (see ``d1.evaluation.math_verify_bound``: too large, too deep or too slow is wrong).
Each file is parsed under the protocol its card names (``d1.evaluation.protocol``; files without a card, such
as d1's published ones, are protocol "d1"), and one row never mixes protocols unless asked to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from d1.evaluation.math_verify_bound import MathVerifyJudge
from d1.evaluation.protocol import read_card
from d1.tasks import TASKS, get_task
from d1.tasks.code import CodeTask, pass_at_k
from d1.tasks.official import protocol_task

GENERATION_GLOB = "*_generations.json"
_SETUP_NAME = re.compile(r"(.+)_\d+_generations\.json$")
_REQUIRED_ITEM_KEYS = ("question", "generations", "ground_truth")
_CL100K_PRETOKENIZER = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PASS_AT_K = (1, 5, 10, 100)
"""The k of the pass@k columns of code tasks (each shown when every problem has at least k samples)."""
_SUDOKU_TOKEN_SCALE = 8  # d1 multiplies Sudoku's token total by 8 before dividing by the empty cells


@dataclass
class ItemScore:
    """One graded generation."""

    question: str
    ground_truth: Any
    extracted: Any
    correct: bool
    n_correct: int
    n_total: int
    effective_tokens: int
    math_verify_correct: bool | None = None


@dataclass
class SetupScore:
    """All ranks of one setup; ``correct``/``total`` count questions, or cells for Sudoku."""

    setup: str
    task: str
    files: list[str] = field(default_factory=list)
    items: list[ItemScore] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def protocols(self) -> list[str]:
        """The protocols of the row's files (one, unless mixing was allowed)."""
        return sorted({card["protocol"] for card in self.cards})

    @property
    def correct(self) -> int:
        return sum(item.n_correct for item in self.items)

    @property
    def total(self) -> int:
        return sum(item.n_total for item in self.items)

    @property
    def accuracy(self) -> float:
        """Percent, as d1 prints it."""
        return 100.0 * self.correct / self.total if self.total else 0.0

    @property
    def avg_effective_tokens(self) -> float:
        """d1's ``total_effective_tokens / processed`` (Sudoku: ``8 * tokens / empty cells``)."""
        tokens = sum(item.effective_tokens for item in self.items)
        scale = _SUDOKU_TOKEN_SCALE if self.task == "sudoku" else 1
        return scale * tokens / self.total if self.items and self.total else 0.0

    @property
    def math_verify_accuracy(self) -> float | None:
        """Percent of items ``math_verify`` accepts (MATH500 only, else ``None``)."""
        checked = [item.math_verify_correct for item in self.items if item.math_verify_correct is not None]
        if not checked:
            return None
        return 100.0 * sum(checked) / len(self.items)


    def problem_verdicts(self) -> list[list[bool]]:
        """The verdicts of each distinct problem's generations (same question and ground truth: n samples)."""
        groups: dict[str, list[bool]] = {}
        for item in self.items:
            key = json.dumps([item.question, item.ground_truth], sort_keys=True, default=str)
            groups.setdefault(key, []).append(item.correct)
        return list(groups.values())

    @property
    def pass_at(self) -> dict[int, float]:
        """Code tasks: percent pass@k per k of `PASS_AT_K` up to the fewest samples of any problem, by Chen et
        al. (2021)'s unbiased estimator averaged over problems ({} for other tasks). pass@1 is the accuracy."""
        if not self.items or not isinstance(get_task(self.task), CodeTask):
            return {}
        groups = self.problem_verdicts()
        fewest = min(len(passes) for passes in groups)
        return {
            k: 100.0 * sum(pass_at_k(len(p), sum(p), k) for p in groups) / len(groups)
            for k in PASS_AT_K
            if k <= fewest
        }


def count_effective_tokens(text: str) -> int:
    """Approximate cl100k token count of a generation without ``<|endoftext|>`` (see module docstring)."""
    if not text:
        return 0
    return len(_CL100K_PRETOKENIZER.findall(text.replace("<|endoftext|>", "")))


def setup_name(path: str | Path) -> str:
    """File name without ``_{rank}_generations.json``; ``ValueError`` for other names."""
    match = _SETUP_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: not a d1 generation file name ('{{setup}}_{{rank}}_generations.json')")
    return match.group(1)


def infer_task(setup: str) -> str:
    """Task of a setup: the registered task name it starts with (``tiny_code_...``), its first ``_``-field if
    that names a task (an alias such as ``math``), else d1's substring order."""
    prefixed = [name for name in TASKS if setup.startswith(name + "_")]
    if prefixed:
        return max(prefixed, key=len)
    try:
        return get_task(setup.split("_", 1)[0]).name
    except ValueError:
        pass
    for needle, task in (
        ("gsm", "gsm8k"),
        ("math", "math500"),
        ("countdown", "countdown"),
        ("sudoku", "sudoku"),
    ):
        if needle in setup:
            return task
    raise ValueError(
        f"cannot tell the task of setup {setup!r} (expected gsm8k/math500/math/countdown/sudoku)"
    )


def load_generation_file(path: str | Path) -> dict[str, Any]:
    """Read and check a d1 generation file; ``ValueError`` naming the file for anything malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read generation file ({err})") from err
    if not text.strip():
        raise ValueError(f"{path}: generation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or "generations" not in data:
        raise ValueError(f"{path}: missing key 'generations' at the top level")
    if not isinstance(data["generations"], list):
        raise ValueError(f"{path}: 'generations' must be a list")
    for index, item in enumerate(data["generations"]):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: generations[{index}] is not an object")
        for key in _REQUIRED_ITEM_KEYS:
            if key not in item:
                raise ValueError(f"{path}: generations[{index}] is missing key {key!r}")
        if not isinstance(item["generations"], str):
            raise ValueError(f"{path}: generations[{index}]['generations'] must be a string")
    return data


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.glob(GENERATION_GLOB)) if _SETUP_NAME.match(p.name))
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    return files


def score_file(path: str | Path, task_name: str, judge: MathVerifyJudge | None = None) -> list[ItemScore]:
    """Grade every generation in one file with ``task_name``'s parser under the file's protocol (MATH500: and
    ``judge``'s)."""
    return score_data(path, load_generation_file(path), task_name, judge)


def score_data(
    path: str | Path, data: dict[str, Any], task_name: str, judge: MathVerifyJudge | None = None
) -> list[ItemScore]:
    """`score_file` of the already loaded file `data`."""
    task = protocol_task(get_task(task_name), read_card(data)["protocol"])
    items = data["generations"]
    texts = [item["generations"] for item in items]
    try:
        parsed_all = task.parse_many(texts, [item["ground_truth"] for item in items], [str(item["question"]) for item in items])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    scores = [
        ItemScore(
            question=str(item["question"]),
            ground_truth=item["ground_truth"],
            extracted=parsed.extracted,
            correct=parsed.correct,
            n_correct=parsed.n_correct,
            n_total=parsed.n_total,
            effective_tokens=count_effective_tokens(text),
        )
        for item, text, parsed in zip(items, texts, parsed_all, strict=True)
    ]
    if task.name == "math500":
        with nullcontext(judge) if judge is not None else MathVerifyJudge() as mv_judge:
            verdicts = mv_judge.judge_many([(item["generations"], str(item["ground_truth"])) for item in items])
        for score, verdict in zip(scores, verdicts, strict=True):
            score.math_verify_correct = verdict
    return scores


def score_paths(paths: Iterable[str | Path], mix_protocols: bool = False) -> dict[str, SetupScore]:
    """Score generation files and directories (their ``*_generations.json``), grouped by setup, sorted. A setup
    whose files were made under different protocols is refused unless ``mix_protocols``."""
    setups: dict[str, SetupScore] = {}
    with MathVerifyJudge() as judge:  # one worker for all files, started only if a MATH500 file comes
        for path in _expand(paths):
            name = setup_name(path)
            if name not in setups:
                setups[name] = SetupScore(setup=name, task=infer_task(name))
            score = setups[name]
            data = load_generation_file(path)
            card = read_card(data)
            check_same_protocol(score, path, card["protocol"], mix_protocols)
            score.files.append(str(path))
            score.cards.append(card)
            score.items.extend(score_data(path, data, score.task, judge))
    return dict(sorted(setups.items()))


def check_same_protocol(score: SetupScore, path: str | Path, protocol: str, mix_protocols: bool) -> None:
    """Refuse adding a file of another protocol to a row (its accuracy would mean neither protocol)."""
    if mix_protocols or not score.cards or score.protocols == [protocol]:
        return
    raise ValueError(
        f"{path} was made under protocol {protocol!r} but setup {score.setup!r} already holds files made under "
        f"{score.protocols} ({score.files[0]}): one row would mix protocols. Score them separately, or pass "
        "--mix_protocols to put them in one row anyway."
    )


def format_table(scores: dict[str, SetupScore]) -> str:
    """d1's printed results table, plus a ``MathVerify`` column when any setup has one."""
    with_mv = any(score.math_verify_accuracy is not None for score in scores.values())
    header = "{:<40} {:>12} {:>25}".format(
        "Setup (task_model_seqlen_diffusteps)", "Accuracy", "Avg Effective Tokens"
    )
    width = 80 + (13 if with_mv else 0)
    lines = [header + (" {:>12}".format("MathVerify") if with_mv else ""), "-" * width]
    for setup, score in scores.items():
        row = f"{setup:<40} {score.accuracy:>11.2f}% {score.avg_effective_tokens:>25.2f}"
        if with_mv:
            mv = score.math_verify_accuracy
            row += f" {mv:>11.2f}%" if mv is not None else f" {'-':>12}"
        lines.append(row)
    lines.append("=" * width)
    for setup, score in scores.items():
        if score.pass_at:
            counts = sorted({len(verdicts) for verdicts in score.problem_verdicts()})
            samples = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            passes = ", ".join(f"pass@{k} {value:.2f}%" for k, value in score.pass_at.items())
            lines.append(f"{setup}: {passes} ({samples} samples per problem)")
    return "\n".join(lines)


def scores_to_json(scores: dict[str, SetupScore]) -> dict[str, dict[str, Any]]:
    """``{setup: {"accuracy", "correct", "total", "avg_effective_tokens"[, "math_verify_accuracy"], "protocol",
    "protocol_card"}}`` (the card of the row's files; ``{"mixed": [...]}`` when they differ)."""
    out: dict[str, dict[str, Any]] = {}
    for setup, score in scores.items():
        entry: dict[str, Any] = {
            "accuracy": score.accuracy,
            "correct": score.correct,
            "total": score.total,
            "avg_effective_tokens": score.avg_effective_tokens,
        }
        if score.math_verify_accuracy is not None:
            entry["math_verify_accuracy"] = score.math_verify_accuracy
        if score.pass_at:
            entry["pass_at_k"] = {f"pass@{k}": value for k, value in score.pass_at.items()}
        cards = [card for i, card in enumerate(score.cards) if card not in score.cards[:i]]
        entry["protocol"] = "+".join(score.protocols)
        entry["protocol_card"] = cards[0] if len(cards) == 1 else {"mixed": cards}
        out[setup] = entry
    return out
