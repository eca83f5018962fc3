"""`run_grpo`: validate options, data and rewards before any model loads, then train with `DiffuGRPOTrainer`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from d1.cluster import PreemptionCallback
from d1.models.loading import (
    check_model_before_loading,
    load_config,
    load_tokenizer,
    load_trainable_model,
    resolve_mask_token_id,
)
from d1.rl.config import DiffuGRPOConfig
from d1.rl.trainer import DiffuGRPOTrainer
from d1.tasks import Task, get_task
from d1.tasks.base import shuffle_and_hold_out
from d1.tasks.synthetic import GENERATED_TASKS, make_dataset
from d1.utils import (
    check_output_dir,
    check_training_length,
    check_writable,
    claim_output_dir,
    distributed_state,
    run_settings,
    say,
    train_and_save,
)


def resolve_rewards(
    task: Task, names: list[str] | None, weights: list[float] | None
) -> tuple[list[Callable], list[float]]:
    """The task's reward functions and one weight each: all of them with the task's default weights, or those
    named (weight 1 each unless `weights` says); unknown names list the known ones."""
    known = {f.__name__: f for f in task.reward_funcs}
    if not names:
        names, defaults = list(known), list(task.default_reward_weights)
    else:
        defaults = [1.0] * len(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"reward_funcs {unknown} are not rewards of task {task.name!r}; its rewards are {list(known)}."
        )
    weights = list(weights) if weights is not None else defaults
    if len(weights) != len(names):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(names)} reward_funcs {names}.")
    return [known[n] for n in names], weights


def training_rows(config: DiffuGRPOConfig, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) rows: the training source (d1's, a local file, or synthetic data) shuffled with the
    hold-out (d1: the last 500 countdown/sudoku rows; none for synthetic data, whose test set is generated
    disjoint), then validation rows: `validation_path`, else the first `validation_size` training rows."""
    path, holdout = config.data_path, config.train_holdout
    if config.synthetic_train_size > 0:
        if task.name not in GENERATED_TASKS:
            raise ValueError(
                f"synthetic_train_size needs a task with a generator {list(GENERATED_TASKS)}, not {task.name!r}."
            )
        path = str(Path(config.output_dir) / "data" / f"{task.name}_train{GENERATED_TASKS[task.name]}")
        holdout = 0 if holdout is None else holdout
        with distributed_state().main_process_first():
            if not Path(path).exists():  # written atomically: a run killed meanwhile leaves no truncated file
                make_dataset(task.name, config.synthetic_train_size, config.seed, path, split="train")
    holdout = task.train_holdout if holdout is None else holdout
    rows = shuffle_and_hold_out(task.load_train(path), config.seed, holdout)
    if config.validation_path:
        validation, train = task.load_train(config.validation_path)[: config.validation_size or None], rows
    else:
        validation, train = rows[: config.validation_size], rows[config.validation_size :]
    if config.system_prompt is not None:
        for row in train + validation:
            row["prompt"] = task.build_messages(
                task.eval_item(row)["question"], system_prompt=config.system_prompt
            )
    if not train:
        raise ValueError(
            f"No training rows for {task.name!r} after a hold-out of {holdout} rows and "
            f"validation_size={config.validation_size}: add data or lower them."
        )
    return train, validation


def check_references(config: DiffuGRPOConfig, task: Task, rows: list[dict[str, Any]] | None = None) -> None:
    """zero_signal_groups=inpaint needs the task's reference solution (IGPO's hints) of every training row:
    refused for a task without any before the data is made, and for rows without one before the model loads."""
    if config.zero_signal_groups != "inpaint":
        return
    if type(task).reference_completion is Task.reference_completion:
        raise ValueError(
            f"zero_signal_groups=inpaint needs reference solutions, which task {task.name!r} does not give "
            "(Sudoku and GSM8K do). Use zero_signal_groups=skip."
        )
    missing = sum(task.reference_completion(row) is None for row in rows or [])
    if missing:
        raise ValueError(
            f"zero_signal_groups=inpaint: task {task.name!r} gives no reference solution for {missing} of "
            f"{len(rows or [])} training rows (GSM8K needs the 'reasoning' of its worked answer). Fix the data "
            "or use zero_signal_groups=skip."
        )


def run_grpo(config: DiffuGRPOConfig) -> DiffuGRPOTrainer:
    """Train; returns the trainer (its `state.log_history` holds every logged metric)."""
    check_writable(config.output_dir, "output_dir")
    check_training_length(config)
    settings = run_settings(config)
    checkpoint = check_output_dir(config, settings)
    model_config = load_config(config.model_path, config.trust_remote_code)
    config.validate(distributed_state().num_processes, model_config)  # the family's sampler, the estimator
    task = get_task(config.dataset)
    reward_funcs, reward_weights = resolve_rewards(task, config.reward_funcs, config.reward_weights)
    check_references(config, task)
    tokenizer = load_tokenizer(config.model_path, trust_remote_code=config.trust_remote_code)
    mask_token_id = resolve_mask_token_id(tokenizer, model_config, config.mask_token_id)
    train, validation = training_rows(config, task)
    check_references(config, task, train)
    if getattr(config.rollout_options(model_config), "unmask", "schedule") != "schedule":
        say(
            "warning: parallel (confidence-threshold) rollouts have destabilised GRPO after a few hundred steps "
            "in published runs; watch the logged reward trend"
        )
    say(
        f"diffu-GRPO on {task.name}: {len(train)} training prompts, {len(validation)} held out for validation; "
        f"rewards {[f.__name__ for f in reward_funcs]} x {reward_weights}"
    )
    check_model_before_loading(model_config, config)
    claim_output_dir(config, settings)

    model = load_trainable_model(config.model_path, config, mask_token_id)
    trainer = DiffuGRPOTrainer(
        model=model,
        args=config,
        task=task,
        reward_funcs=reward_funcs,
        reward_weights=reward_weights,
        train_dataset=train,
        eval_dataset=validation or None,
        processing_class=tokenizer,
        callbacks=[PreemptionCallback()],
    )
    train_and_save(trainer, checkpoint)
    return trainer
