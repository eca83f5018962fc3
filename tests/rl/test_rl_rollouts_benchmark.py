"""benchmarks/rl_rollouts.py: each rollout mode is the demo's RL stage with only the rollout sampler changed,
and the per-rollout series it reports are read from the log history."""

from __future__ import annotations

from dataclasses import asdict

from benchmarks.rl_methods import Run, run_argv
from benchmarks.rl_rollouts import MODES, _ends, mode_flags, series

from d1.cli.args import parse_config
from d1.demo.config import DemoConfig
from d1.demo.data import DemoData
from d1.rl.config import DiffuGRPOConfig


def test_each_mode_is_the_demos_rl_stage_with_its_rollout_sampler(tmp_path) -> None:
    config = DemoConfig(output_dir=str(tmp_path / "demo"))
    config.rollout_sampler = None
    data = DemoData(*(tmp_path / f"{name}.csv" for name in ("pretrain", "sft", "rl", "validation", "test")))
    run = Run(tmp_path / "demo", 0, "easy", "exact", tmp_path / "run")
    argv = run_argv(config, data, run, steps=8, every=4, iterations=4)
    options = {}
    for mode in MODES:
        parsed = parse_config(DiffuGRPOConfig, argv + mode_flags(mode))
        parsed.validate(world_size=1)
        assert (parsed.max_steps, parsed.eval_steps, parsed.logging_steps, parsed.output_dir) == (
            8, 4, 4, str(tmp_path / "run" / "grpo"))  # fmt: skip
        assert (parsed.learning_rate, parsed.negative_advantage_scale, parsed.logp_estimator) == (2e-4, 0.0, "coupled")
        options[mode] = asdict(parsed.rollout_options())
    assert options["exact"] == asdict(parse_config(DiffuGRPOConfig, argv).rollout_options())  # LLaDA's loop
    assert {k: v for k, v in options["dual"].items() if options["exact"][k] != v} == {"cache": "dual"}
    assert {k: v for k, v in options["dual_threshold"].items() if options["exact"][k] != v} == {
        "cache": "dual", "unmask": "threshold"}  # fmt: skip


def test_series_reads_one_value_per_rollout_log() -> None:
    result = {"log_history": [
        {"reward": 0.1, "rollout/tokens_per_pass": 2.0, "step": 4}, {"eval_accuracy": 50.0, "step": 4},
        {"reward": 0.3, "rollout/tokens_per_pass": 3.0, "step": 8}]}  # fmt: skip
    assert series(result, "reward") == [0.1, 0.3]
    assert _ends([1.0, 2.0, 3.0, 4.0], n=2) == "1.50 -> 3.50"
