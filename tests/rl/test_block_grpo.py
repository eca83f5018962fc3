"""`d1 grpo` on a block-diffusion model (the tiny LLaDA 2.x): the family's sampler for rollouts, the block estimators
(`block_elbo` with grpo_clip, espo and spg; `trajectory` with the rollout's recorded steps), the full-attention
estimators refused before loading, and the configs of configs/grpo/llada2/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from d1.cli.args import parse_config
from d1.models.loading import load_config
from d1.rl.config import DiffuGRPOConfig
from d1.rl.run import run_grpo
from d1.tasks import register_task, unregister_task
from d1.tasks.synthetic import make_dataset
from tests.rl.test_grpo_run import DigitsTask, config_of, grpo_argv

LLADA2_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "grpo" / "llada2").glob("*.yaml"))


def block_argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """The GRPO test recipe with two steps and the block sampler's grid of 8 (2 passes a block)."""
    return grpo_argv(model_dir, out, "--max_steps", "2", *extra)


@pytest.fixture
def digits(tmp_path: Path):
    """Flags for the digits task (a reward a random model earns unevenly, so advantages and gradients are nonzero)."""
    data = make_dataset("sudoku", 64, seed=0, output_path=tmp_path / "train.csv", split="train")
    register_task(DigitsTask())
    yield ["--dataset", "digits", "--data_path", str(data), "--train_holdout", "0", "--lr_scheduler_type", "constant"]
    unregister_task("digits")


def digits_argv(model_dir: Path, out: Path, digits: list[str], *extra: str) -> list[str]:
    argv = block_argv(model_dir, out, *extra)
    del argv[argv.index("--synthetic_train_size") : argv.index("--synthetic_train_size") + 2]
    return [*argv, *digits]


def weights_moved(trainer, model_dir: Path) -> bool:
    before = load_file(model_dir / "model.safetensors")
    after = trainer.model.state_dict()
    return any(not torch.equal(before[name], after[name].cpu()) for name in before)


@pytest.mark.parametrize(
    "method",
    [
        ("block_elbo", "grpo_clip"),
        ("block_elbo", "espo", "--epsilon", "0.2", "--beta", "0.01"),
        ("block_elbo", "spg", "--beta", "0"),
        ("trajectory", "grpo_clip", "--shrinkage", "2"),
    ],
    ids=lambda m: "-".join(m[:2]),
)
def test_two_steps_on_the_tiny_llada2(tiny_llada2_dir, tmp_path, digits, method) -> None:
    estimator, objective, *extra = method
    argv = digits_argv(tiny_llada2_dir, tmp_path / "out", digits, "--logp_estimator", estimator, "--objective",
                       objective, *extra)  # fmt: skip
    trainer = run_grpo(config_of(*argv))
    assert trainer.state.global_step == 2
    logged = trainer.state.log_history[0]
    assert logged["reward_std"] > 0 and torch.isfinite(torch.tensor(logged["loss"]))
    assert weights_moved(trainer, tiny_llada2_dir)  # gradients flowed through the estimator
    assert trainer.rollout_options.name == "block_diffusion" and trainer.rollout_options.threshold == 0.95
    batch = trainer.rollout_buffer[0]
    if estimator == "trajectory":  # every completion token was committed by a step (or filled after EOS: -1)
        steps = batch["steps"]
        assert steps.shape == batch["completion_mask"].shape and bool((steps[batch["completion_mask"].bool()] >= 0).all())
    else:
        assert "steps" not in batch


def test_trajectory_two_steps_on_the_tiny_sdar_with_its_blocks_of_4(tiny_sdar_dir, tmp_path, digits) -> None:
    argv = digits_argv(tiny_sdar_dir, tmp_path / "out", digits, "--logp_estimator", "trajectory")
    at = argv.index("--block_length")
    del argv[at : at + 2]  # the family's blocks of 4 (its sampler defaults)
    trainer = run_grpo(config_of(*argv))
    assert trainer.state.global_step == 2 and trainer.rollout_options.block_length == 4
    steps = trainer.rollout_buffer[0]["steps"]
    assert int(steps.max()) >= 3  # 16 tokens in blocks of 4: at least one step a block
    assert weights_moved(trainer, tiny_sdar_dir)


@pytest.mark.parametrize("estimator", ["one_step", "coupled", "mc_elbo", "left_to_right"])
def test_full_attention_estimators_are_refused_before_loading(tiny_llada2_dir, tmp_path, estimator) -> None:
    extra = ["--rollout_order", "left_to_right"] if estimator == "left_to_right" else []
    config = config_of(*block_argv(tiny_llada2_dir, tmp_path, "--logp_estimator", estimator, *extra))
    with pytest.raises(ValueError, match=f"logp_estimator='{estimator}' assumes full attention"):
        config.validate(1, load_config(tiny_llada2_dir))


def test_block_estimators_are_refused_for_a_full_attention_model(tiny_model_dir, tmp_path) -> None:
    config = config_of(*block_argv(tiny_model_dir, tmp_path, "--logp_estimator", "block_elbo"))
    with pytest.raises(ValueError, match="'block_elbo' needs a block-diffusion model"):
        run_grpo(config)
    assert not (tmp_path / "checkpoint-2").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--logp_estimator", "trajectory", "--objective", "espo", "--beta", "0.01"], "defined on ELBO estimates"),
        (["--logp_estimator", "block_elbo", "--shrinkage", "2"], "shrinkage=2 would be ignored"),
        (["--logp_estimator", "block_elbo", "--mc_blockwise", "true"], "mc_blockwise=True would be ignored"),
        (["--logp_estimator", "trajectory", "--mc_samples", "4"], "mc_samples=4 would be ignored"),
        (["--logp_estimator", "trajectory", "--shrinkage", "0"], "shrinkage=0 must be >= 1"),
        (["--logp_estimator", "block_elbo", "--sampler", "llada"], "scores the block_diffusion sampler's blocks"),
        (["--logp_estimator", "trajectory", "--p_mask_prompt", "0.3"], "p_mask_prompt=0.3 would be ignored"),
        (["--logp_estimator", "block_elbo", "--zero_signal_groups", "inpaint"], "fixes IGPO's hint tokens in place"),
    ],
)
def test_block_estimator_options_are_checked(tiny_llada2_dir, tmp_path, flags, message) -> None:
    with pytest.raises(ValueError, match=message):
        config_of(*block_argv(tiny_llada2_dir, tmp_path, *flags)).validate(1, load_config(tiny_llada2_dir))


def test_sharded_weights_are_refused_for_the_block_sampler(tiny_llada2_dir, tmp_path, monkeypatch) -> None:
    config = config_of(*block_argv(tiny_llada2_dir, tmp_path, "--logp_estimator", "block_elbo", "--beta", "0"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="sampler='block_diffusion' under fsdp.*Launch with DDP"):
        config.validate(1, load_config(tiny_llada2_dir))


def test_rollouts_use_the_family_sampler_when_none_is_set(tiny_llada2_dir, tiny_sdar_dir, tmp_path) -> None:
    config = config_of(*block_argv(tiny_llada2_dir, tmp_path, "--logp_estimator", "block_elbo"))
    llada2 = config.rollout_options(load_config(tiny_llada2_dir))
    assert (llada2.name, llada2.unmask, llada2.threshold, llada2.block_length) == ("block_diffusion", "threshold", 0.95, 8)
    sdar = parse_config(DiffuGRPOConfig, ["--model_path", str(tiny_sdar_dir), "--gen_length", "16"])
    options = sdar.rollout_options(load_config(tiny_sdar_dir))
    assert (options.name, options.block_length, options.threshold) == ("block_diffusion", 4, 0.85)
    assert config.rollout_options().name == "llada"  # no model config: the checks made before any model exists


@pytest.mark.parametrize("path", LLADA2_CONFIGS, ids=[p.stem for p in LLADA2_CONFIGS])
def test_llada2_configs_are_block_elbo_grpo_on_the_family_sampler(path, tiny_llada2_dir) -> None:
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    config.validate(1, load_config(tiny_llada2_dir))  # the tiny model's config stands in for LLaDA2.0-mini's
    assert (config.model_path, config.logp_estimator, config.objective) == (
        "inclusionAI/LLaDA2.0-mini", "block_elbo", "grpo_clip"
    )
    assert config.dataset == path.stem and config.sampler is None
    options = config.rollout_options(load_config(tiny_llada2_dir))
    assert (options.name, options.block_length, options.sampling().steps) == ("block_diffusion", 32, 32)


def test_all_four_tasks_have_a_llada2_config() -> None:
    assert {p.stem for p in LLADA2_CONFIGS} == {"gsm8k", "math", "countdown", "sudoku"}


@pytest.mark.parametrize("estimator", ["block_elbo", "trajectory"])
def test_block_estimators_raise_a_learnable_reward(tiny_llada2_dir, tmp_path, digits, estimator) -> None:
    """The digits reward (about 0.08 for the random tiny LLaDA 2.x) climbs within 6 steps of 64 completions at lr
    3e-3, as for LLaDA in test_grpo_run.py; 16 steps reached 0.79 (block_elbo) and 0.77 (trajectory) on
    2026-12-02."""
    argv = digits_argv(tiny_llada2_dir, tmp_path / "out", digits, "--logp_estimator", estimator)
    argv += ["--num_generations", "4", "--per_device_train_batch_size", "64", "--gradient_accumulation_steps", "1",
             "--generation_batch_size", "64", "--max_completion_length", "8", "--learning_rate", "3e-3", "--beta", "0",
             "--max_steps", "6"]  # fmt: skip
    trainer = run_grpo(config_of(*argv))
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 3 and rewards[0] < 0.15 and rewards[-1] > 0.25, rewards


@pytest.mark.parametrize("estimator", ["block_elbo", "trajectory"])
def test_resume_between_inner_updates_matches_uninterrupted(tiny_llada2_dir, tmp_path, digits, estimator) -> None:
    """The rollout buffer (with the trajectory's steps and committed tokens) carries a resume mid-rollout to the
    same weights; a resume with another block_length is refused like any changed setting."""
    extra = ("--logp_estimator", estimator, "--save_steps", "1", "--beta", "0", "--max_steps", "4")
    run_grpo(config_of(*digits_argv(tiny_llada2_dir, tmp_path / "a", digits, *extra)))
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")  # 3 % 2: mid-rollout
    resume = ("--resume_from_checkpoint", "auto")
    trainer = run_grpo(config_of(*digits_argv(tiny_llada2_dir, tmp_path / "b", digits, *extra, *resume)))
    assert trainer.state.global_step == 4
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    argv = digits_argv(tiny_llada2_dir, tmp_path / "b", digits, *extra, *resume)
    argv[argv.index("--block_length") + 1] = "4"
    with pytest.raises(ValueError, match="other settings: block_length 8 -> 4"):
        run_grpo(config_of(*argv))
