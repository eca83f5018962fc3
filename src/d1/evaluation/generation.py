"""`generate_answers`: the pure core of evaluation (model in, d1 records out), shared by `d1 eval` and the RL
trainer's validation. Any registered sampler (`d1.diffusion.samplers`) decodes the left-padded batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from d1.diffusion.samplers import SamplerCall, SamplerOptions, sample
from d1.diffusion.trace import Trace
from d1.evaluation.traces import trace_item
from d1.tasks import Task
from d1.utils import derive_seed

Progress = Callable[[list[dict[str, Any]], dict[str, float]], None]


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    items: Sequence[dict[str, Any]],
    options: SamplerOptions,
    *,
    batch_size: int = 4,
    few_shot: int = 0,
    mask_token_id: int | None = None,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    keep_special_tokens: bool = True,
    system_prompt: str | None = None,
    generator: torch.Generator | None = None,
    sync_done: Callable[[bool], bool] | None = None,
    progress: Progress | None = None,
    stats: dict[str, float] | None = None,
    traces: list[dict[str, Any]] | None = None,
    trace_first: int = 0,
) -> list[dict[str, Any]]:
    """d1 records `{"question", "prompt_input", "generations", "ground_truth"}` for `items` (`question`,
    `ground_truth`), generated with `options`' sampler in batches of left-padded prompts; only the completion
    is decoded.

    Noise comes from `generator` if given, else from a per-batch generator seeded with
    `derive_seed(seed, index of the batch's first item)` (`indices` gives the items' global indices),
    else from torch's global RNG. `progress(records, batch_stats)` is called after each batch; `stats`
    accumulates `forward_passes`, `generated_tokens`, `seconds`, `batches`. Items whose global index is below
    `trace_first` are traced into `traces` (`d1.evaluation.traces.trace_item`). `sync_done`: see
    `d1.generate` (sharded weights). The caller sets eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    if indices is not None and len(indices) != len(items):
        raise ValueError(f"indices has {len(indices)} entries for {len(items)} items.")
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [
            task.build_prompt(tokenizer, item["question"], few_shot, system_prompt=system_prompt)
            for item in batch
        ]
        encoded = tokenizer(
            prompts, padding=True, add_special_tokens=False, padding_side="left", return_tensors="pt"
        )
        prompt_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        span = range(start, start + len(batch))
        numbers = [indices[i] for i in span] if indices is not None else list(span)
        batch_trace = Trace() if traces is not None and min(numbers) < trace_first else None
        batch_generator = generator
        if batch_generator is None and seed is not None:
            batch_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, numbers[0]))
        call = SamplerCall(
            attention_mask=None if bool(attention_mask.all()) else attention_mask,
            generator=batch_generator,
            mask_token_id=mask_token_id,
            stats={},
            trace=batch_trace,
            sync_done=sync_done,
        )
        began = time.perf_counter()
        output = sample(model, prompt_ids, options, call)
        completions = output[:, prompt_ids.shape[1] :]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=not keep_special_tokens)
        batch_stats = {
            "seconds": time.perf_counter() - began,
            "forward_passes": call.stats["forward_passes"],
            "generated_tokens": options.gen_length * len(batch),
            "batches": 1,
        }
        new = [
            {
                "question": item["question"],
                "prompt_input": prompt,
                "generations": text,
                "ground_truth": item["ground_truth"],
            }
            for item, prompt, text in zip(batch, prompts, texts, strict=True)
        ]
        records.extend(new)
        if batch_trace is not None:
            for row, (number, record) in enumerate(zip(numbers, new, strict=True)):
                if number < trace_first:
                    row_trace = batch_trace.rows[row]
                    traces.append(trace_item(tokenizer, task, number, record, completions[row].cpu(), row_trace))
        if stats is not None:
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0) + value
        if progress is not None:
            progress(new, batch_stats)
    return records
