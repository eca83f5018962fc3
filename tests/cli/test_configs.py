"""Every shipped YAML config parses into its dataclass with the values it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from d1.cli.args import parse_config
from d1.rl.config import DiffuGRPOConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "grpo").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_grpo_config_parses_and_validates(path: Path) -> None:
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    config.validate(world_size=1)
    if path.stem != "tiny-sudoku":  # d1's LLaDA-8B-Instruct runs
        assert (config.model_path, config.num_generations, config.max_completion_length) == (
            "GSAI-ML/LLaDA-8B-Instruct",
            6,
            256,
        )
        assert config.num_iterations == (8 if config.dataset in ("countdown", "sudoku") else 12)
        assert (config.lora_r, config.lora_alpha, config.beta, config.learning_rate) == (128, 64, 0.04, 3e-6)


def test_all_four_tasks_have_a_config() -> None:
    assert {p.stem for p in CONFIGS} >= {"gsm8k", "math", "countdown", "sudoku"}
