"""Every shipped YAML config parses into its dataclass with the values it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from d1.cli.args import parse_config
from d1.rl.config import DiffuGRPOConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "grpo").glob("*.yaml"))
TASKS = ("gsm8k", "math", "countdown", "sudoku")
METHOD_CONFIGS = [p for p in CONFIGS if "-" in p.stem and p.stem.split("-")[0] in TASKS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_grpo_config_parses_and_validates(path: Path) -> None:
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    config.validate(world_size=1)
    if path.stem in TASKS:  # d1's LLaDA-8B-Instruct runs
        assert (config.model_path, config.num_generations, config.gen_length) == (
            "GSAI-ML/LLaDA-8B-Instruct",
            6,
            256,
        )
        assert config.num_iterations == (8 if config.dataset in ("countdown", "sudoku") else 12)
        assert (config.lora_r, config.lora_alpha, config.beta, config.learning_rate) == (128, 64, 0.04, 3e-6)


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=[p.stem for p in METHOD_CONFIGS])
def test_method_configs_are_the_benchmarked_method_on_d1s_rollouts(path: Path) -> None:
    from benchmarks.rl_methods import METHODS

    task, method = path.stem.split("-", 1)
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    config.validate(world_size=1)
    d1 = parse_config(DiffuGRPOConfig, ["--config", str(path.with_name(f"{task}.yaml"))])
    assert config.dataset == task and config.model_path == d1.model_path
    core = ("logp_estimator", "objective", "rollout_order", "zero_signal_groups")
    assert {k: str(getattr(config, k)) for k in core} == {
        k: METHODS[method].options.get(k, str(getattr(DiffuGRPOConfig, k))) for k in core
    }
    same = ("num_generations", "gen_length", "block_length", "diffusion_steps", "load_in_4bit", "lora_r")
    assert all(getattr(config, name) == getattr(d1, name) for name in same)


def test_all_four_tasks_have_a_config() -> None:
    assert {p.stem for p in CONFIGS} >= {"gsm8k", "math", "countdown", "sudoku"}


DREAM_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "grpo" / "dream").glob("*.yaml"))


@pytest.mark.parametrize("path", DREAM_CONFIGS, ids=[p.stem for p in DREAM_CONFIGS])
def test_dream_grpo_config_is_d1s_recipe_on_dream(path: Path) -> None:
    dream = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    dream.validate(world_size=1)
    llada = parse_config(DiffuGRPOConfig, ["--config", str(path.parents[1] / path.name)])
    if path.stem == "code-coupled":  # DiffuCoder's recipe on DiffuCoder's model: test_code_coupled_configs
        return
    assert dream.model_path == "Dream-org/Dream-v0-Instruct-7B" and dream.dataset == llada.dataset
    assert dream.lora_target_modules == []  # the Dream family's default targets
    same = ("num_generations", "gen_length", "block_length", "diffusion_steps", "num_iterations", "beta")
    assert all(getattr(dream, name) == getattr(llada, name) for name in (*same, "learning_rate", "lora_r"))


def test_dream_sft_and_eval_configs_parse_and_pass_the_checks() -> None:
    from d1.evaluation.config import EvalConfig
    from d1.sft.config import SFTConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    assert {p.stem for p in DREAM_CONFIGS if "-" not in p.stem} == {"gsm8k", "math", "countdown", "sudoku"}
    sft = parse_config(SFTConfig, ["--config", str(root / "sft" / "dream-s1k.yaml")])
    assert (sft.model_path, sft.preset, sft.lora_r, sft.lora_alpha) == ("Dream-org/Dream-v0-Instruct-7B", "s1k", 128, 256)
    evaluation = parse_config(EvalConfig, ["--config", str(root / "eval" / "dream.yaml")])
    evaluation.options()
    assert (evaluation.sampler, evaluation.alg, evaluation.steps, evaluation.top_p) == ("dream", "entropy", 256, 0.9)


@pytest.mark.parametrize("model", ["GSAI-ML/LLaDA-8B-Instruct", "apple/DiffuCoder-7B-Instruct"])
def test_code_coupled_configs_are_diffucoders_recipe(model: str) -> None:
    """apple/ml-diffucoder recipes/config_coupled_code.yaml, and the brief's 256 steps."""
    root = Path(__file__).resolve().parents[2] / "configs" / "grpo"
    path = root / ("code-coupled.yaml" if model.startswith("GSAI") else "dream/code-coupled.yaml")
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    config.validate(world_size=1)
    config.validate(world_size=8)
    assert (config.model_path, config.dataset, config.logp_estimator) == (model, "acecode", "coupled")
    recipe = (config.num_generations, config.gen_length, config.diffusion_steps, config.max_steps)
    assert recipe == (10, 256, 256, 256)
    assert (config.temperature, config.beta, config.epsilon, config.learning_rate) == (1.0, 0.01, 0.5, 1e-6)
    assert (config.num_iterations, config.p_mask_prompt, config.scale_rewards, config.lora) == (2, 0.0, "none", False)
    assert config.reward_funcs is None  # the acecode task's defaults: code x 2.0, code_format x 0.5


def test_llada2_numina_lean_sft_config_is_dfactorys_recipe() -> None:
    from d1.models.loading import load_config
    from d1.sft.config import SFTConfig

    root = Path(__file__).resolve().parents[2]
    sft = parse_config(SFTConfig, ["--config", str(root / "configs" / "sft" / "llada2-numina-lean.yaml")])
    assert (sft.model_path, sft.preset, sft.max_length, sft.learning_rate) == (
        "inclusionAI/LLaDA2.0-mini", "numina-lean", 2048, 1e-5
    )
    assert (sft.noise_range_low, sft.noise_range_high, sft.num_train_epochs, sft.warmup_steps) == (0.3, 0.8, 1, 0.03)
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps == 8  # dFactory's global batch
    assert sft.block_size_for(load_config(str(root / "tests" / "fixtures" / "llada2_tiny"))) == 32
