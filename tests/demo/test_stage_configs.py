"""The trainer configs of the demo's stages, built directly, equal what the former `d1 sft`/`d1 grpo` argv path
parsed (default and `--quick` demo)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from d1.cli.args import parse_config
from d1.cli.sft import ALIASES
from d1.demo import pipeline
from d1.demo.config import DemoConfig
from d1.demo.data import DemoData
from d1.rl.config import DiffuGRPOConfig
from d1.sft.config import SFTConfig


def comparable(config: object) -> dict:
    """`asdict` without the field derived from the clock (TrainingArguments' default logging folder)."""
    values = asdict(config)
    values.pop("logging_dir", None)
    return values


@pytest.mark.parametrize("quick", [False, True])
def test_stage_configs_equal_the_former_argv_path(tmp_path: Path, quick: bool) -> None:
    config = DemoConfig(quick=quick, output_dir=str(tmp_path / "demo"))
    data = DemoData(*(tmp_path / f"{name}.csv" for name in ("pretrain", "sft", "rl", "validation", "test")))
    models = tmp_path / "demo" / "models"
    for model, path, job, steps, preset in (
        (models / "init", data.pretrain, "base", config.pretrain_steps, "text"),
        (models / "base", data.sft, "sft", config.sft_steps, "generic"),
    ):
        old = parse_config(SFTConfig, pipeline._old_sft_argv(config, model, path, job, steps, preset), ALIASES)
        assert comparable(pipeline.sft_config(config, model, path, job, steps, preset)) == comparable(old)
    for start, job in ((models / "base", "rl_base"), (models / "sft", "d1")):
        old = parse_config(DiffuGRPOConfig, pipeline._old_grpo_argv(config, data, start, job))
        assert comparable(pipeline.grpo_config(config, data, start, job)) == comparable(old)
        assert comparable(parse_config(DiffuGRPOConfig, pipeline.grpo_argv(config, data, start, job))) == comparable(old)
