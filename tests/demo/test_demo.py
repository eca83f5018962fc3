"""`d1 demo --quick`: every stage runs, the report has its parts, a second run resumes instead of starting over,
and bad output folders fail before any training."""

from __future__ import annotations

import csv
import json
from collections import namedtuple

import matplotlib.image
import pytest

from d1.demo import pipeline
from d1.demo.config import ROWS, DemoConfig
from d1.demo.data import make_demo_data
from d1.demo.pipeline import run_demo
from d1.demo.report import rl_signal, write_report
from d1.tasks.synthetic import make_sudoku_split
from d1.viz.strip import strip_steps


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream", "llada2", "sdar"])
def test_quick_demo_runs_every_stage_and_reports(tmp_path, capsys, family) -> None:
    config = DemoConfig(quick=True, output_dir=str(tmp_path / "demo"), seed=1, family=family)
    report = run_demo(config)
    out = tmp_path / "demo"
    stages = ["init", "pretrain", "sft", "rl_base", "d1", "eval"]
    assert all((out / "stages" / f"{s}.json").exists() for s in stages)
    sft_losses = [h["loss"] for h in json.loads((out / "stages" / "sft.json").read_text())["log_history"] if "loss" in h]
    assert sft_losses[-1] < 0.8 * sft_losses[0]
    text = report.read_text()
    assert f"a tiny {family} (`d1 init-model --family {family}`)" in text
    for part in (
        "| model |",
        "+SFT",
        "d1 (SFT + diffu-GRPO)",
        "## The RL signal",
        "## Why this task",
        "## Wall time",
        "## Hyperparameters",
    ):
        assert part in text
    for plot in ("sft_loss.png", "rl_curves.png", "accuracy_by_length.png"):
        assert (out / plot).stat().st_size > 1000 and f"]({plot})" in text
    summary = json.loads((out / "report.json").read_text())
    assert set(summary["scores"]) == set(ROWS)
    assert all(set(summary["scores"][r]) == {str(n) for n in config.eval_gen_lengths} for r in ROWS)
    assert set(summary["stage_seconds"]) == set(stages)
    generations = sorted(p.name for p in (out / "eval").glob("*_generations.json"))
    assert len(generations) == len(ROWS) * len(config.eval_gen_lengths)
    printed = capsys.readouterr().out
    assert "report:" in printed and "| d1 (SFT + diffu-GRPO) |" in printed

    run_demo(config)  # a second run skips every finished stage and says so
    again = capsys.readouterr().out
    assert all(f"{s}: already done" in again for s in stages)


def test_rl_signal_reads_the_rl_logs_and_says_when_there_was_nothing_to_learn() -> None:
    def logs(rewards: list[float]) -> dict:
        return {
            "log_history": [{"step": i, "reward": r, "zero_std_ratio": 0.5} for i, r in enumerate(rewards)]
        }

    done = {"rl_base": logs([0.0] * 6), "d1": logs([0.1, 0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.6, 0.6])}
    config = DemoConfig(rl_base_hints=False)
    lines = rl_signal(config, done)
    assert "| +diffu-GRPO | 0.000 | 0.000 | 50% |" in lines
    assert "| d1 (SFT + diffu-GRPO) | 0.100 | 0.600 | 50% |" in lines
    assert lines[-1].startswith("+diffu-GRPO: no rollout earned any reward")
    done["rl_base"] = logs([0.0, 0.2])
    assert not any("no rollout" in line for line in rl_signal(config, done))
    assert "| +diffu-GRPO (IGPO hints) | 0.100 | 0.100 | 50% |" in rl_signal(DemoConfig(), done)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("logp_estimator", "exact", "logp_estimator='exact' is unknown"),
        ("negative_advantage_scale", 2.0, r"negative_advantage_scale=2.0 is outside \[0, 1\]"),
        ("reward_funcs", ["solved"], r"reward_funcs \['solved'\] are not rewards of task 'sudoku'"),
    ],
)
def test_bad_rl_settings_fail_before_any_stage(tmp_path, field, value, message) -> None:
    config = DemoConfig(quick=True, output_dir=str(tmp_path / "demo"))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        run_demo(config)
    assert not list((tmp_path / "demo" / "stages").iterdir())


def test_unwritable_output_dir_fails_before_training(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="output_dir"):
        run_demo(DemoConfig(quick=True, output_dir=str(blocker / "demo")))
    assert not (blocker.parent / "demo").exists()


def test_full_disk_fails_before_training(tmp_path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda _: usage(10, 10, 1024))
    with pytest.raises(OSError, match="MiB free"):
        run_demo(DemoConfig(quick=True, output_dir=str(tmp_path / "demo")))
    assert not (tmp_path / "demo").exists()


def test_rl_puzzles_are_easier_and_the_rest_keep_d1s_blanks(tmp_path) -> None:
    data = make_demo_data(tmp_path, 0, 20, 40, 10, 10, lambda q, a: q + a, "none", (2, 6))

    def blanks(path) -> list[int]:
        return [row["Puzzle"].count("0") for row in csv.DictReader(path.open())]

    assert len(blanks(data.rl)) == 40 and set(blanks(data.rl)) <= {2, 3, 4, 5, 6}
    assert set(blanks(data.validation)) == set(blanks(data.test)) == {8}
    # d1's own 8 blanks keep the split's puzzles: the RL set of the demo before its curriculum
    eight = make_demo_data(tmp_path / "eight", 0, 20, 40, 10, 10, lambda q, a: q + a, "none", (8, 8))
    split = [item["puzzle"] for item in make_sudoku_split(70, 0, "train")[20:60]]
    assert [row["Puzzle"] for row in csv.DictReader(eight.rl.open())] == split
    with pytest.raises(ValueError, match=r"rl_empty_cells=\[7, 3\]"):
        DemoConfig(output_dir=str(tmp_path / "demo"), rl_empty_cells=[7, 3])


def test_stop_after_runs_the_stages_up_to_it_and_a_later_run_continues(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=r"stop_after='sfft' is not a stage; use one of \['init', 'pretrain'"):
        DemoConfig(quick=True, output_dir=str(out), stop_after="sfft")
    assert run_demo(DemoConfig(quick=True, output_dir=str(out), stop_after="init")) == out
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["init.json"] and not (out / "report.md").exists()
    init = (out / "stages" / "init.json").read_text()
    run_demo(DemoConfig(quick=True, output_dir=str(out), stop_after="init"))  # finished: skipped, stops again
    assert (out / "stages" / "init.json").read_text() == init and "init: already done" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["init.json"]
    # a setting a finished stage read would leave that stage as it is: refused, naming it, nothing written
    with pytest.raises(ValueError, match=r"finished stages read other settings \(seed: 0 -> 2\)"):
        run_demo(DemoConfig(quick=True, output_dir=str(out), stop_after="init", seed=2))
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    # one that only later stages read may change (here RL's, after init)
    run_demo(DemoConfig(quick=True, output_dir=str(out), stop_after="init", rl_learning_rate=1e-4))
    assert json.loads((out / "config.json").read_text())["rl_learning_rate"] == 1e-4


def test_every_setting_named_in_first_stage_is_a_demo_setting() -> None:
    from dataclasses import fields

    from d1.demo.config import FIRST_STAGE, STAGES

    assert set(FIRST_STAGE) <= {f.name for f in fields(DemoConfig)}
    assert set(FIRST_STAGE.values()) <= {*STAGES, None}


def test_unknown_lr_scheduler_is_named_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"lr_scheduler_type='cosin'.*constant_with_warmup"):
        DemoConfig(output_dir=str(tmp_path / "demo"), lr_scheduler_type="cosin")
    assert not (tmp_path / "demo").exists()


def test_report_shows_the_denoising_of_a_test_puzzle_and_rl_curves_per_stage(tmp_path, tiny_model_dir) -> None:
    config = DemoConfig(quick=True, output_dir=str(tmp_path / "demo"), eval_gen_lengths=[28], n_test=3)
    data = make_demo_data(tmp_path / "data", 0, 8, 8, 4, config.n_test, lambda q, a: q + a, "none", (2, 6))
    evaluated = pipeline._evaluate(config, data, {row: str(tiny_model_dir) for row in ROWS})
    logs = {"log_history": [{"step": i, "reward": 0.1 * i, "eval_accuracy": 5.0 * i} for i in range(4)]}
    done = {stage: {**logs, "seconds": 1.0} for stage in ("pretrain", "sft", "rl_base", "d1")}
    done["eval"] = {**evaluated, "seconds": 1.0}
    text = write_report(config, done, 4.0).read_text()
    out = tmp_path / "demo"
    assert "## Denoising one test puzzle" in text and "![denoising](denoising.png)" in text
    assert "[+SFT](trace_sft.html)" in text and "[d1 (SFT + diffu-GRPO)](trace_d1.html)" in text
    for name in ("denoising.png", "rl_curves.png"):
        assert (out / name).stat().st_size > 5000
    for row in ("sft", "d1"):
        page = (out / f"trace_{row}.html").read_text()
        assert "Solve the following Sudoku puzzle" in page and "<script src" not in page
    strip = matplotlib.image.imread(out / "denoising.png")
    assert strip.shape[0] < strip.shape[1] and strip.std() > 0.05  # a wide strip, not blank
    rl = matplotlib.image.imread(out / "rl_curves.png")
    assert rl.shape[0] > 0.5 * rl.shape[1]  # two rows of plots (one per RL stage), not one wide row


def test_strip_steps_run_from_nothing_decided_to_everything_decided() -> None:
    item = {"trace": {"gen_length": 4, "block_length": 4, "steps": [
        {"block": 0, "positions": [p], "tokens": [1], "confidences": [0.5]} for p in range(4)]}}  # fmt: skip
    assert strip_steps(item, 8) == [0, 1, 2, 3, 4]
    assert strip_steps(item, 3) == [0, 2, 4]


def test_unknown_family_is_named_before_anything_runs(tmp_path) -> None:
    message = r"--family 'rwkv' is unknown; choose one of \['dream', 'llada', 'llada2', 'sdar'\]"
    with pytest.raises(ValueError, match=message):
        DemoConfig(quick=True, family="rwkv", output_dir=str(tmp_path / "demo"))
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("family", "estimator", "message"),
    [
        ("llada2", "coupled", r"logp_estimator='coupled' assumes full attention.*Use logp_estimator=block_elbo"),
        ("llada", "block_elbo", r"logp_estimator='block_elbo' needs a block-diffusion model"),
        ("sdar", "hints", r"zero_signal_groups='inpaint' fixes IGPO's hint tokens in place"),
    ],
)
def test_a_setting_the_familys_model_refuses_fails_before_any_stage(tmp_path, family, estimator, message):
    settings = {"rl_base_hints": True} if estimator == "hints" else {"logp_estimator": estimator}
    config = DemoConfig(quick=True, family=family, output_dir=str(tmp_path / "demo"), **settings)
    with pytest.raises(ValueError, match=message):
        run_demo(config)
    assert not (tmp_path / "demo" / "models").exists()
