"""The trainer configs of the demo's stages: the settings that reach SFT and diffu-GRPO (default and `--quick`
demo), and the `d1 grpo` flags that benchmarks/rl_methods.py runs, which must parse back to the same config.

The configs were first tested equal (`asdict`, all fields but the clock-derived logging folder) to those of
the former argv path, `d1.cli.args.parse_config` of hand-written flags (commit 6352815)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from d1.cli.args import parse_config
from d1.demo import pipeline
from d1.demo.config import STAGES, DemoConfig
from d1.demo.data import DemoData
from d1.rl.config import DiffuGRPOConfig


def comparable(config: object) -> dict:
    """`asdict` without the field derived from the clock (TrainingArguments' default logging folder)."""
    values = asdict(config)
    values.pop("logging_dir", None)
    return values


def demo_data(folder: Path) -> DemoData:
    return DemoData(*(folder / f"{name}.csv" for name in ("pretrain", "sft", "rl", "validation", "test")))


# (quick, pretrain: max_steps, save_steps, warmup; sft: the same)
@pytest.mark.parametrize(
    "quick, pretrain, sft", [(False, (300, 100, 20), (250, 83, 20)), (True, (40, 13, 4), (30, 10, 3))]
)
def test_sft_stages_train_all_weights_in_float32_with_the_demos_budget(
    tmp_path, quick, pretrain, sft
) -> None:
    config = DemoConfig(quick=quick, output_dir=str(tmp_path / "demo"), seed=3)
    data = demo_data(tmp_path)
    models = tmp_path / "demo" / "models"
    for model, path, job, preset, budget in (
        (models / "init", data.pretrain, "base", "text", pretrain),
        (models / "base", data.sft, "sft", "generic", sft),
    ):
        steps = config.pretrain_steps if job == "base" else config.sft_steps
        args = pipeline.sft_config(config, model, path, job, steps, preset)
        assert (args.max_steps, args.save_steps, args.warmup_steps) == budget
        assert (args.model_path, args.train_data, args.preset) == (str(model), str(path), preset)
        assert args.output_dir == str(models / job)
        assert (args.lora, args.dtype, args.report_to, args.seed) == (False, "float32", [], 3)
        assert (args.max_length, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
            104,
            64,
            1,
        )
        assert (args.learning_rate, args.lr_scheduler_type.value) == (1e-3, "constant_with_warmup")
        assert (args.eval_strategy.value, args.resume_from_checkpoint, args.save_total_limit) == (
            "no",
            "auto",
            2,
        )


@pytest.mark.parametrize(
    "quick, job, steps, every, hints",
    [(False, "d1", 160, 40, "skip"), (True, "d1", 8, 4, "skip"), (False, "rl_base", 80, 20, "inpaint")],
)
def test_grpo_stages_get_the_tiny_recipe_and_its_flags_parse_back_to_it(
    tmp_path, quick, job, steps, every, hints
) -> None:
    config = DemoConfig(quick=quick, output_dir=str(tmp_path / "demo"))
    data = demo_data(tmp_path)
    start = tmp_path / "demo" / "models" / "sft"
    args = pipeline.grpo_config(config, data, start, job)
    assert (args.model_path, args.output_dir) == (str(start), str(tmp_path / "demo" / "models" / job))
    assert args.zero_signal_groups == hints
    if hints == "inpaint":  # IGPO's hints scaled to the 28-token answer
        assert (args.inpaint_free_tail, args.inpaint_chunk_size) == (2, [2, 4])
    assert (args.data_path, args.validation_path, args.train_holdout) == (
        str(data.rl),
        str(data.validation),
        0,
    )
    assert (args.max_steps, args.eval_steps, args.save_steps) == (steps, every, every)
    assert (args.per_device_train_batch_size, args.generation_batch_size, args.num_generations) == (
        128,
        128,
        8,
    )
    assert (args.gen_length, args.block_length, args.diffusion_steps) == (28, 28, 14)
    assert (args.logp_estimator, args.rollout_sampler, args.negative_advantage_scale) == (
        "coupled",
        "cached",
        0.0,
    )
    assert (args.learning_rate, args.lr_scheduler_type.value, args.beta) == (2e-4, "constant", 0.0)
    assert (args.lora, args.dtype, args.system_prompt, args.log_completions) == (False, "float32", "", False)
    assert args.reward_funcs == ["sudoku_solved_reward_func"]
    flags = pipeline.grpo_argv(config, data, start, job)
    assert comparable(parse_config(DiffuGRPOConfig, flags)) == comparable(args)


def test_the_pipeline_runs_the_stages_that_stop_after_names(tmp_path) -> None:
    config = DemoConfig(quick=True, output_dir=str(tmp_path / "demo"))
    assert [stage.name for stage in pipeline._stages(config, {})] == list(STAGES)


@pytest.mark.parametrize("family", ["llada2", "sdar"])
def test_a_block_diffusion_family_trains_in_blocks_of_4_and_rolls_out_with_its_own_sampler(tmp_path, family):
    config = DemoConfig(family=family, output_dir=str(tmp_path / "demo"))
    data = demo_data(tmp_path)
    models = tmp_path / "demo" / "models"
    for model, steps, preset in ((models / "init", 300, "text"), (models / "base", 250, "generic")):
        assert pipeline.sft_config(config, model, data.sft, "job", steps, preset).block_length == 4
    assert pipeline.grpo_config(config, data, models / "base", "rl_base").zero_signal_groups == "skip"
    args = pipeline.grpo_config(config, data, models / "sft", "d1")
    assert (args.gen_length, args.block_length, args.diffusion_steps) == (28, 4, 14)
    assert (args.logp_estimator, args.rollout_sampler) == ("block_elbo", None)
    flags = pipeline.grpo_argv(config, data, models / "sft", "d1")
    assert "--rollout_sampler" not in flags
    assert comparable(parse_config(DiffuGRPOConfig, flags)) == comparable(args)


def test_a_full_attention_familys_sft_has_no_blocks_and_explicit_settings_win(tmp_path):
    config = DemoConfig(output_dir=str(tmp_path / "demo"), block_length=14, logp_estimator="mc_elbo")
    assert pipeline.sft_config(config, tmp_path, tmp_path, "sft", 10, "generic").block_length is None
    assert (config.block_length, config.logp_estimator, config.rollout_sampler) == (14, "mc_elbo", "cached")


@pytest.mark.parametrize("family, cells", [("llada", [2, 6]), ("dream", [2, 6]), ("llada2", [8, 8]), ("sdar", [8, 8])])
def test_each_familys_rl_puzzles_and_a_users_choice_wins(tmp_path, family, cells):
    assert DemoConfig(family=family, output_dir=str(tmp_path)).rl_empty_cells == cells
    assert DemoConfig(family=family, output_dir=str(tmp_path), rl_empty_cells=[3, 5]).rl_empty_cells == [3, 5]
