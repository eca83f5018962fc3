"""SFT data: presets (s1K as d1 preprocesses it, NuminaMath-LEAN, generic prompt/response or `messages`),
chat formatting with the tokenizer's template, tokenisation with length control, and d1's 1% eval split."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import datasets
from transformers import PreTrainedTokenizerBase

from d1.data.sources import require_columns
from d1.tasks.gsm8k import SYSTEM_PROMPT as D1_SYSTEM_PROMPT

Messages = list[dict[str, str]]
Example = tuple[Messages, str]  # (prompt messages, assistant response)

PRESET_BY_SOURCE = {"simplescaling/s1k": "s1k", "ai-mo/numinamath-lean": "numina-lean"}
PRESETS = ("s1k", "numina-lean", "generic", "text")


def detect_preset(train_data: str, preset: str | None) -> str:
    """An explicit preset, else the one known for the dataset name (`simplescaling/s1K` -> s1k), else generic."""
    if preset is None:
        return PRESET_BY_SOURCE.get(str(train_data).lower().rstrip("/"), "generic")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; choose one of {list(PRESETS)}.")
    return preset


class NotText(ValueError):
    """A data field that must be text is not; `examples_from_rows` adds the file and row."""

    def __init__(self, field: str, value: Any, expected: str = "text") -> None:
        shown = "null" if value is None else f"of type {type(value).__name__} ({value!r:.80})"
        super().__init__(
            f"field {field!r} is {shown}, not {expected}; training on its Python repr would be silently wrong. "
            "Fix the data, or name the right columns (--prompt_field/--response_field, --preset)."
        )


def _text(value: Any, field: str) -> str:
    """`value` when it is a string; anything else (null, number, object) is refused naming `field`."""
    if not isinstance(value, str):
        raise NotText(field, value)
    return value


def _response(value: Any, field: str) -> str | None:
    """A response: None when missing or blank (the row is skipped and counted), else it must be text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value, field)


def _s1k(row: dict[str, Any]) -> Example | None:
    """d1's s1K preprocessing: system prompt + question as the user turn, reasoning/answer tags as the reply."""
    trajectories = row["thinking_trajectories"]
    if not isinstance(trajectories, list) or not trajectories:
        raise NotText("thinking_trajectories", trajectories, "a non-empty list of strings")
    thinking = _text(trajectories[0], "thinking_trajectories[0]")
    question, attempt = _text(row["question"], "question"), _text(row["attempt"], "attempt")
    response = f"<reasoning>{thinking}</reasoning>\n<answer>{attempt}</answer>"
    return [{"role": "user", "content": D1_SYSTEM_PROMPT + "\n\n" + question}], response


def _numina_lean(row: dict[str, Any]) -> Example | None:
    """NuminaMath-LEAN: the informal problem and the Lean 4 statement as the prompt, the formal proof as the reply."""
    proof = _response(row.get("formal_proof"), "formal_proof")
    if proof is None:
        return None
    prompt = (
        f"{_text(row['problem'], 'problem')}\n\nComplete the following Lean 4 proof of this statement:\n"
        f"```lean4\n{_text(row['formal_statement'], 'formal_statement')}\n```"
    )
    return [{"role": "user", "content": prompt}], proof


PRESET_COLUMNS: dict[str, tuple[list[str], Callable[[dict[str, Any]], Example | None]]] = {
    "s1k": (["question", "thinking_trajectories", "attempt"], _s1k),
    "numina-lean": (["problem", "formal_statement", "formal_proof"], _numina_lean),
}


@dataclass
class SFTDataReport:
    """What happened to the rows, printed before training so nothing is dropped silently."""

    rows: int = 0
    skipped_no_response: int = 0
    truncated: int = 0
    dropped_too_long: int = 0

    def summary(self) -> str:
        return (
            f"{self.rows} rows: {self.skipped_no_response} skipped (no response), {self.truncated} truncated, "
            f"{self.dropped_too_long} dropped (longer than max_length)"
        )


def examples_from_rows(
    rows: datasets.Dataset,
    preset: str,
    source: str,
    prompt_field: str | None = None,
    response_field: str | None = None,
    system_prompt: str | None = None,
) -> tuple[list[Example], int]:
    """(prompt messages, response) pairs for the preset; returns them and how many rows had no response."""
    if preset in PRESET_COLUMNS:
        columns, convert = PRESET_COLUMNS[preset]
        require_columns(
            rows, columns, source, f"The {preset!r} preset needs {columns}; use --preset generic otherwise."
        )
    elif prompt_field is None and response_field is None and "messages" in rows.column_names:
        convert = _from_messages
    else:
        prompt_field, response_field = prompt_field or "prompt", response_field or "completion"
        require_columns(
            rows,
            [prompt_field, response_field],
            source,
            "Name the right ones with --prompt_field/--response_field, or provide a `messages` column.",
        )

        def convert(row: dict[str, Any]) -> Example | None:
            response = _response(row[response_field], response_field)
            if response is None:
                return None
            return [{"role": "user", "content": _text(row[prompt_field], prompt_field)}], response

    examples, skipped = [], []
    for index, row in enumerate(rows):
        try:
            example = convert(row)
        except NotText as err:
            raise ValueError(f"Dataset {source!r} row {index}: {err}") from None
        if example is None:
            skipped.append(index)
            continue
        if system_prompt:
            example = ([{"role": "system", "content": system_prompt}, *example[0]], example[1])
        examples.append(example)
    if not examples:
        raise ValueError(
            f"No usable rows in {source!r}: every row's response is empty or null (rows {_first(skipped)}). "
            "Fill in the responses, or name the right column with --response_field."
        )
    return examples, len(skipped)


def _first(indices: list[int], shown: int = 10) -> str:
    """Row numbers for a message: all of them, or the first `shown` and how many more."""
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(map(str, indices[:shown])) + more


def _from_messages(row: dict[str, Any]) -> Example | None:
    """Chat rows: everything before the last assistant message is the prompt, that message is the response."""
    messages = row["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise NotText("messages", messages, 'a list of {"role", "content"} objects')
    if not messages or messages[-1].get("role") != "assistant":
        return None
    response = _response(messages[-1].get("content"), f"messages[{len(messages) - 1}].content")
    if response is None:
        return None
    prompt = [
        {key: _text(m.get(key), f"messages[{i}].{key}") for key in ("role", "content")}
        for i, m in enumerate(messages[:-1])
    ]
    return prompt, response


def tokenize_examples(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Literal["truncate", "drop"] = "truncate",
    report: SFTDataReport | None = None,
) -> list[dict[str, Any]]:
    """Token ids of chat-formatted examples plus each prompt's length (the part never masked).

    The prompt ends with the assistant header, so the model learns only the reply. Rows longer than
    `max_length` are cut or dropped (`truncation`); a prompt that leaves no room for any reply is an error
    in `truncate` mode and dropped in `drop` mode.
    """
    report = report if report is not None else SFTDataReport()
    prompts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p, _ in examples
    ]
    fulls = [
        tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
        for p, r in examples
    ]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    out = []
    for i, (ids, p_ids) in enumerate(zip(full_ids, prompt_ids, strict=True)):
        prompt_length = len(p_ids)
        if prompt_length >= max_length:
            if truncation == "drop":
                report.dropped_too_long += 1
                continue
            raise ValueError(
                f"Row {i}: its prompt is {prompt_length} tokens, which leaves no room for a response at "
                f"max_length={max_length}. Raise --max_length, or pass --truncation drop to skip such rows."
            )
        if len(ids) > max_length:
            if truncation == "drop":
                report.dropped_too_long += 1
                continue
            ids = ids[:max_length]
            report.truncated += 1
        out.append({"input_ids": ids, "prompt_length": prompt_length, "index": len(out)})
    return out


def texts_from_rows(rows: datasets.Dataset, source: str) -> list[str]:
    """The `text` preset's column, every value checked to be text (a null or number is refused by row)."""
    require_columns(rows, ["text"], source, "The 'text' preset trains on a `text` column.")
    texts = list(rows["text"])
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"Dataset {source!r} row {index}: {NotText('text', text)}")
    return texts


def tokenize_texts(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Literal["truncate", "drop"] = "truncate",
    report: SFTDataReport | None = None,
) -> list[dict[str, Any]]:
    """The `text` preset (masked-diffusion pre-training): raw text + EOS, no chat template, no prompt, so
    every token can be masked."""
    report = report if report is not None else SFTDataReport()
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = [*ids, tokenizer.eos_token_id]
        if len(ids) > max_length:
            if truncation == "drop":
                report.dropped_too_long += 1
                continue
            ids, report.truncated = ids[:max_length], report.truncated + 1
        out.append({"input_ids": ids, "prompt_length": 0, "index": len(out)})
    return out


def eval_split(
    items: list[dict[str, Any]], fraction: float = 0.01, seed: int = 42
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """d1's split: shuffle (seeded), hold out int(n * fraction) rows; held-out rows get fixed t = linspace(0, 1)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_eval = int(len(items) * fraction)
    held_out, train = items[:n_eval], items[n_eval:]
    for i, item in enumerate(held_out):
        item["t"] = i / (n_eval - 1) if n_eval > 1 else 0.0
    return train, held_out
