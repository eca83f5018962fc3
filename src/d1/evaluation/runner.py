"""d1's evaluation run (`eval/eval.py`): generate answers for a task's test set and write d1 generation files.

`run_eval` adds to `generate_answers` (`evaluation/generation.py`) what a run needs: every option checked
before any model loads (`evaluation/config.py`), sharding over processes (rank r takes items r, r+W, ...), one
`{task}_{model}_{gen_length}_{steps}_{rank}_generations.json` per rank rewritten atomically after every batch,
and resumption from that file when its recorded settings equal the run's (`evaluation/files.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from d1.evaluation.config import EvalConfig, check_config, output_path
from d1.evaluation.files import (
    check_shard,
    header,
    previous_files,
    remove_stale_temporaries,
    run_settings,
)
from d1.evaluation.generation import generate_answers
from d1.evaluation.traces import read_traces, trace_file, traces_path
from d1.hub import hub_unreachable
from d1.models.loading import load_config, load_model, load_tokenizer, resolve_mask_token_id
from d1.tasks import Task
from d1.tasks.base import subsample_indices
from d1.tasks.gsm8k import HUB_NAME as GSM8K_HUB
from d1.tasks.math500 import TEST_HUB_NAME as MATH500_HUB
from d1.utils import distributed_state, is_main_process, say, write_json_atomic

_LOCAL_TEST_FORMATS = {
    "gsm8k": (
        GSM8K_HUB,
        "with columns 'question' and 'answer' (the solution text, ending in '#### <number>')",
    ),
    "math500": (MATH500_HUB, "with columns 'problem' and 'answer'"),
    "humaneval": ("openai/openai_humaneval", "with columns 'task_id', 'prompt', 'test', 'entry_point'"),
    "mbpp": ("google-research-datasets/mbpp", "sanitized config, with columns 'prompt', 'test_list', 'test_imports'"),
}


def load_items(config: EvalConfig, task: Task) -> list[dict[str, Any]]:
    """The (subsampled) test items; an unreachable Hub set says which local file would do instead."""
    try:
        items = task.load_test(config.data_path, subsample=-1)
    except OSError as err:
        if config.data_path is not None or task.name not in _LOCAL_TEST_FORMATS:
            raise
        hub_name, columns = _LOCAL_TEST_FORMATS[task.name]
        raise hub_unreachable(
            hub_name,
            err,
            f"hf download --repo-type dataset {hub_name}",
            f"pass --data_path FILE: a local .jsonl/.json/.csv/.parquet copy of its test split, {columns}",
        ) from err
    if not items:
        raise ValueError(f"data_path={config.data_path!r} holds no test items.")
    subsample = config.subsample
    if subsample is None:  # the task's default; all of a file smaller than that
        subsample = task.default_subsample if task.default_subsample <= len(items) else -1
    return [items[i] for i in subsample_indices(len(items), subsample, config.seed)]


def load_eval_tokenizer(config: EvalConfig, kind: str) -> tuple[PreTrainedTokenizerBase, int, str]:
    """The tokenizer (a full checkpoint's own if it has one), the mask token id and the weights' location."""
    weights = config.weights
    has_tokenizer = (Path(weights) / "tokenizer_config.json").is_file()
    tokenizer_source = weights if kind == "full" and has_tokenizer else config.model_path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=config.trust_remote_code)
    model_config = load_config(weights, config.trust_remote_code)
    return tokenizer, resolve_mask_token_id(tokenizer, model_config, config.mask_token_id), weights


def load_eval_model(
    config: EvalConfig, kind: str, weights: str, mask_token_id: int, device: torch.device
) -> nn.Module:
    """The model in eval mode on `device`, a LoRA adapter merged in."""
    model = load_model(
        weights,
        dtype=config.dtype,
        device=device,
        trust_remote_code=config.trust_remote_code,
        mask_token_id=mask_token_id,
    )
    if kind == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.checkpoint_path).merge_and_unload()
    return model.eval()


def _metrics(previous: dict[str, Any], totals: dict[str, float], processed: int) -> dict[str, Any]:
    """d1's `wall_time` (mean seconds per batch) and `total_processed`, plus throughput counters."""
    seconds, batches = totals["seconds"], int(totals["batches"])
    return {
        **previous,
        "wall_time": seconds / batches if batches else 0.0,
        "total_processed": processed,
        "total_wall_time": seconds,
        "batches": batches,
        "generated_tokens": int(totals["generated_tokens"]),
        "tokens_per_second": totals["generated_tokens"] / seconds if seconds else 0.0,
        "forward_passes": int(totals["forward_passes"]),
    }


def run_eval(config: EvalConfig) -> Path:
    """Evaluate this process's shard, resuming from its file; returns that file's path.

    Every process must call it (it waits for all at the end). Works single-process, under
    `accelerate launch` and under `torchrun`.
    """
    kind, options = check_config(config)
    task = config.task
    items = load_items(config, task)
    if config.save_traces > len(items):
        raise ValueError(
            f"save_traces={config.save_traces} is more than this run's {len(items)} test items; pass at most "
            f"--save_traces {len(items)}."
        )
    tokenizer, mask_token_id, weights = load_eval_tokenizer(config, kind)

    state = distributed_state()
    rank, world = state.process_index, state.num_processes
    indices = list(range(rank, len(items), world))
    shard = [items[i] for i in indices]
    adapter = [config.checkpoint_path] if kind == "lora" else []
    settings = run_settings(config, options, [weights, *adapter], items, mask_token_id, world)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    earlier = previous_files(config, settings, state.is_main_process)
    state.wait_for_everyone()  # --overwrite's deletions happen before any rank writes
    path = output_path(config, rank)
    remove_stale_temporaries(path)
    existing = earlier.get(path)
    if existing is not None:
        check_shard(path, existing, shard)
    records: list[dict[str, Any]] = list(existing["generations"]) if existing else []
    trace_to = traces_path(path)
    traces = read_traces(trace_to) if records and config.save_traces and trace_to.is_file() else []
    previous = dict(existing["metrics"]) if existing and isinstance(existing.get("metrics"), dict) else {}
    totals = {key: float(previous.get(key, 0)) for key in ("generated_tokens", "forward_passes", "batches")}
    totals["seconds"] = float(previous.get("total_wall_time", 0.0))
    say(
        f"{task.name}: {len(items)} items over {world} process(es) -> {path.parent}/"
        f"{path.name.rsplit('_', 2)[0]}_*_generations.json"
        + (f" (resuming: {len(records)}/{len(shard)} done on rank {rank})" if records else "")
    )

    def save() -> None:
        payload = {
            "generations": records,
            "metrics": _metrics(previous, totals, len(records)),
            **header(config, options),
            "settings": settings,
        }
        write_json_atomic(path, payload)
        if traces:
            write_json_atomic(trace_to, trace_file(traces))

    todo = len(shard) - len(records)
    if todo > 0 or existing is None:
        save()
    if todo > 0:
        from tqdm.auto import tqdm

        model = load_eval_model(config, kind, weights, mask_token_id, state.device)
        bar = tqdm(total=len(shard), initial=len(records), disable=not is_main_process(), desc=task.name)

        def on_batch(new: list[dict[str, Any]], batch_stats: dict[str, float]) -> None:
            records.extend(new)
            for key in totals:
                totals[key] += batch_stats[key]
            save()
            bar.update(len(new))

        start = len(records)
        generate_answers(
            model,
            tokenizer,
            task,
            shard[start:],
            options,
            **config.prompting(),
            mask_token_id=mask_token_id,
            indices=indices[start:],
            progress=on_batch,
            traces=traces,
            trace_first=config.save_traces,
        )
        bar.close()
    state.wait_for_everyone()
    return path
