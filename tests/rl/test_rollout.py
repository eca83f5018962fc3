"""Rollout helpers: left truncation of prompts, the completion mask, reward calls and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from d1.rl.rollout import RewardError, completion_mask, encode_prompts, score_completions
from d1.rl.sampler import RepeatSampler


def test_encode_prompts_left_pads_and_cuts_from_the_left(tiny_model_dir) -> None:
    from d1 import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    enc = encode_prompts(tok, ["abcdef", "xy"], max_prompt_length=4)
    assert enc.truncated == 1
    assert tok.decode(enc.input_ids[0]) == "cdef"
    assert enc.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert tok.decode(enc.input_ids[1, 2:]) == "xy"


def test_completion_mask_covers_up_to_first_eos() -> None:
    ids = torch.tensor([[5, 6, 1, 1, 1], [5, 5, 5, 5, 5], [1, 7, 1, 7, 7]])
    assert completion_mask(ids, eos_token_id=1).tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]


def test_score_completions_passes_columns_and_maps_none_to_nan() -> None:
    def exact(prompts, completions, answer, **kw):
        return [1.0 if c[0]["content"] == a else None for c, a in zip(completions, answer, strict=True)]

    out = score_completions([exact], ["p", "p"], ["4", "5"], {"answer": ["4", "4"]})
    assert out[0, 0].item() == 1.0 and math.isnan(out[1, 0].item())


def test_reward_error_names_function_and_sample() -> None:
    def fragile(prompts, completions, **kw):
        return [1 / len(c[0]["content"]) for c in completions]

    with pytest.raises(RewardError, match=r"fragile raised ZeroDivisionError.*sample 1: completion=''"):
        score_completions([fragile], ["a", "b"], ["ok", ""], {})


def test_repeat_sampler_groups_and_repeats() -> None:
    sampler = RepeatSampler(size=5, num_generations=2, prompts_per_step=2, repeat_count=3, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 2 * 2 * 2 * 3  # two full chunks, the fifth prompt is dropped
    first = indices[:4]
    assert first[0] == first[1] and first[2] == first[3] and first[0] != first[2]
    assert indices[4:8] == first and indices[8:12] == first  # the same step's prompts for every iteration
    assert set(indices[12:]).isdisjoint(first)
    sampler.set_epoch(1)
    assert list(sampler) != indices
    with pytest.raises(ValueError, match="fewer than one step needs"):
        RepeatSampler(size=1, num_generations=2, prompts_per_step=2, repeat_count=1, seed=0)
