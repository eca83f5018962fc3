"""benchmarks/rl_methods.py's bookkeeping on a hand-written log history: training seconds per validation, the
cost split per rollout, and the best-validation checkpoint at equal rollouts and within a time budget; and
its methods per family (the block estimators on a block-diffusion model, the full-attention ones refused)."""

from __future__ import annotations

import sys
from argparse import Namespace
from dataclasses import asdict

import pytest
from benchmarks.rl_methods import (
    BLOCK_METHODS,
    METHODS,
    SETTINGS,
    Run,
    best_checkpoint,
    cost,
    family_methods,
    main,
    method_argv,
    method_flags,
    method_problem,
    timeline,
)

from d1.cli.args import parse_config
from d1.demo.config import DemoConfig
from d1.demo.data import DemoData
from d1.demo.pipeline import grpo_config
from d1.rl.config import DiffuGRPOConfig

# mu 2: a rollout every 2 steps, logged every 2 steps (per-step means), validation every 2 rollouts
HISTORY = [
    {"eval_accuracy": 60.0, "step": 0},
    {"time/rollout": 3.0, "time/old_logps": 1.0, "time/update": 2.0, "step": 2},
    {"time/rollout": 2.0, "time/old_logps": 1.0, "time/update": 1.0, "step": 4},
    {"eval_accuracy": 65.0, "step": 4},
    {"time/rollout": 4.0, "time/old_logps": 0.0, "time/update": 2.0, "step": 6},
    {"time/rollout": 2.0, "time/old_logps": 1.0, "time/update": 1.0, "step": 8},
    {"eval_accuracy": 64.0, "step": 8},
]
RESULT = {"log_history": HISTORY, "iterations": 2, "wall_s": 99.0, "peak_mib": 1.0}


def test_timeline_counts_training_seconds_only():
    # per-step means times the 2 steps of each log: 12 + 8 by step 4, + 12 + 8 by step 8
    assert timeline(RESULT) == [
        {"step": 0, "seconds": 0.0, "accuracy": 60.0},
        {"step": 4, "seconds": 20.0, "accuracy": 65.0},
        {"step": 8, "seconds": 40.0, "accuracy": 64.0},
    ]


def test_cost_is_per_rollout():
    assert cost(RESULT) == {"rollout": 11 * 2 / 4, "old_logps": 3 * 2 / 4, "update": 6 * 2 / 4}


@pytest.mark.parametrize("budget, step", [(None, 4), (40.0, 4), (19.0, 0)])
def test_best_checkpoint_within_a_budget(tmp_path, budget, step):
    run = Run(tmp_path / "demo", 0, "d1", "d1", tmp_path / "run")
    chosen, folder = best_checkpoint(run, RESULT, budget)
    assert chosen == step
    assert folder == str(tmp_path / ("demo/models/sft" if step == 0 else f"run/grpo/checkpoint-{step}"))


def test_method_flags_parse_into_a_valid_config():
    for name in METHODS:
        config = parse_config(DiffuGRPOConfig, ["--dataset", "sudoku", "--beta", "0", *method_flags(name)])
        config.validate(world_size=1)


def test_each_family_gets_its_methods_and_d1_grpo_refuses_the_others(tiny_llada2_dir, tiny_model_dir):
    assert family_methods(tiny_llada2_dir) is BLOCK_METHODS and family_methods(tiny_model_dir) is METHODS
    for model, own, other, reason in (
        (tiny_llada2_dir, BLOCK_METHODS, METHODS, "assumes full attention"),
        (tiny_model_dir, METHODS, BLOCK_METHODS, "needs a block-diffusion model"),
    ):
        assert {name: method_problem(name, model) for name in own} == dict.fromkeys(own)
        assert all(reason in method_problem(name, model) for name in other)


def test_a_full_attention_method_on_a_block_demo_is_refused_before_training(
    tiny_llada2_dir, tmp_path, monkeypatch, capsys
):
    demo = tmp_path / "demo"
    (demo / "models").mkdir(parents=True)
    (demo / "models" / "sft").symlink_to(tiny_llada2_dir)  # no config.json: nothing past the check may run
    argv = ["--demos", str(demo), "--out", str(tmp_path / "out"), "--methods", "block_elbo", "d1"]
    monkeypatch.setattr(sys, "argv", ["rl_methods.py", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert "--methods d1: logp_estimator='one_step' assumes full attention" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", ["easy", "hard"])
def test_coupled_pos_with_the_demos_budget_is_the_demos_own_rl_stage(tmp_path, setting):
    """The module docstring's claim: `--methods coupled_pos --rollouts 40 --eval_every 10 --learning_rate 2e-4`
    trains with the demo's d1 stage's settings (a demo whose RL puzzles are the setting's)."""
    def demo() -> DemoConfig:
        return DemoConfig(output_dir=str(tmp_path / "demo"), rl_empty_cells=SETTINGS[setting]["rl_empty_cells"])

    data = DemoData(*(tmp_path / f"{name}.csv" for name in ("pretrain", "sft", "rl", "validation", "test")))
    run = Run(tmp_path / "demo", 0, setting, "coupled_pos", tmp_path / "run")
    args = Namespace(rollouts=40, eval_every=10, learning_rate=2e-4)
    argv, iterations = method_argv(demo(), data, run, args)
    benchmark = asdict(parse_config(DiffuGRPOConfig, argv))
    stage = asdict(grpo_config(demo(), data, tmp_path / "demo" / "models" / "sft", "d1"))
    changed = {key for key in stage if benchmark[key] != stage[key] and key != "logging_dir"}  # clock-derived
    assert changed == {"output_dir", "logging_steps", "save_total_limit"}
    assert (iterations, benchmark["max_steps"], benchmark["eval_steps"]) == (4, 160, 40)
