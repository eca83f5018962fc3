"""Rollout pieces: prompt encoding with left truncation, the completion mask, and calling reward functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class EncodedPrompts:
    """Left-padded prompt ids [N, P] with their attention mask, and how many prompts were cut."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: int


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_prompt_length: int | None
) -> EncodedPrompts:
    """Tokenise and left-pad prompts; prompts longer than `max_prompt_length` keep their last tokens (the
    question's end and the assistant header matter most), and are counted."""
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    truncated = 0
    if max_prompt_length is not None:
        truncated = sum(len(r) > max_prompt_length for r in rows)
        rows = [r[-max_prompt_length:] for r in rows]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return EncodedPrompts(ids, mask, truncated)


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for every completion token up to and including the first EOS (all tokens when there is none)."""
    is_eos = completion_ids == eos_token_id
    length = completion_ids.shape[1]
    first = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(is_eos[:, 0], length, dtype=torch.long)
    )
    return (torch.arange(length, device=completion_ids.device)[None, :] <= first[:, None]).long()


RewardFunc = Callable[..., list[float | None]]


class RewardError(RuntimeError):
    """A reward function raised; names the function and the first offending sample."""


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[str],
    columns: dict[str, list[Any]],
) -> torch.Tensor:
    """Rewards [N, F]: each function called TRL-style `f(prompts=, completions=[[{"role", "content"}]], **columns)`;
    None becomes NaN. On an exception, the rows are retried one by one to name the offending sample."""
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    out = torch.full((len(completions), len(reward_funcs)), math.nan)
    for j, func in enumerate(reward_funcs):
        try:
            values = func(prompts=prompts, completions=chat, **columns)
        except Exception as err:
            raise RewardError(_offending_sample(func, prompts, chat, columns, err)) from err
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {func.__name__} returned {len(values)} values for {len(completions)} completions."
            )
        out[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values])
    return out


def _offending_sample(func: RewardFunc, prompts: list, chat: list, columns: dict, err: Exception) -> str:
    for i in range(len(chat)):
        try:
            func(
                prompts=prompts[i : i + 1],
                completions=chat[i : i + 1],
                **{k: v[i : i + 1] for k, v in columns.items()},
            )
        except Exception as row_err:  # noqa: BLE001 - we report whatever the user's function raised
            return (
                f"reward function {func.__name__} raised {type(row_err).__name__}: {row_err} on sample {i}: "
                f"completion={chat[i][0]['content']!r:.300} columns={ {k: v[i] for k, v in columns.items()} }"
            )
    return f"reward function {func.__name__} raised {type(err).__name__}: {err} (on the batch; no single row fails)"
