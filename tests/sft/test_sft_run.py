"""`d1 sft` end to end on the tiny model: the loss falls, a resumed run continues the same run, bad input fails
early with a clear message, and a 2-process accelerate (gloo) run finishes."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from d1.cli.args import parse_config
from d1.cli.sft import ALIASES
from d1.sft.config import SFTConfig
from d1.sft.run import run_sft
from tests.conftest import run_on_two_cpu_processes


def sft_argv(model_dir, data, out, *extra: str) -> list[str]:
    return [
        "--model_name",
        str(model_dir),
        "--train_data",
        str(data),
        "--output_dir",
        str(out),
        "--job_name",
        "run",
        "--max_length",
        "48",
        "--batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--no-lora",
        "--debugging",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--eval_fraction",
        "0",
        "--seed",
        "3",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def config_of(*argv: str) -> SFTConfig:
    return parse_config(SFTConfig, list(argv), ALIASES)


def test_seed_flags_map_to_training_arguments(tmp_path) -> None:
    config = config_of(
        "--batch_size",
        "2",
        "--num_epochs",
        "3",
        "--grad_accum_steps",
        "5",
        "--output_dir",
        str(tmp_path),
        "--job_name",
        "j",
        "--debugging",
    )
    assert (
        config.per_device_train_batch_size,
        config.num_train_epochs,
        config.gradient_accumulation_steps,
    ) == (2, 3, 5)
    assert config.output_dir == os.path.join(str(tmp_path), "j")
    assert "wandb" not in config.report_to and config.lora is True


def test_yaml_config_with_flag_override(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("learning_rate: 0.5\nbatch_size: 4\nmax_length: 64\n")
    config = config_of(
        "--config", str(tmp_path / "c.yaml"), "--max_length", "32", "--output_dir", str(tmp_path)
    )
    assert (config.learning_rate, config.per_device_train_batch_size, config.max_length) == (0.5, 4, 32)
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.5\n")
    with pytest.raises(ValueError, match="learning_rat"):
        config_of("--config", str(tmp_path / "bad.yaml"))


def test_tiny_sft_lowers_loss(family_model_dir, arithmetic_jsonl, tmp_path) -> None:
    trainer = run_sft(config_of(*sft_argv(family_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "24")))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    assert all("unscaled_loss" in h for h in trainer.state.log_history if "loss" in h)
    assert (tmp_path / "run" / "model.safetensors").exists() and (
        tmp_path / "run" / "tokenizer.json"
    ).exists()


def test_lora_sft_saves_an_adapter(family_model_dir, arithmetic_jsonl, tmp_path) -> None:
    argv = [
        a
        for a in sft_argv(family_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "2")
        if a != "--no-lora"
    ]
    run_sft(config_of(*argv, "--lora_r", "4", "--lora_alpha", "8"))
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_resume_continues_the_same_run(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    argv = sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path / "a", "--max_steps", "6", "--save_steps", "3")
    run_sft(config_of(*argv))
    # a second run "crashed" after step 3: only checkpoint-3 exists, then it is started again with auto resume
    (tmp_path / "b" / "run").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoint-3", tmp_path / "b" / "run" / "checkpoint-3")
    argv_b = sft_argv(
        tiny_model_dir, arithmetic_jsonl, tmp_path / "b", "--max_steps", "6", "--save_steps", "3"
    )
    trainer = run_sft(config_of(*argv_b, "--resume_from_checkpoint", "auto"))
    assert trainer.state.global_step == 6
    a = load_file(tmp_path / "a" / "run" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        (
            [{"question": "q", "answer": "a"}],
            [],
            r"no column\(s\) \['prompt', 'completion'\].*\['question', 'answer'\]",
        ),
        ([{"prompt": "q", "completion": "a"}], ["--preset", "s1k"], r"no column\(s\).*thinking_trajectories"),
        ([{"prompt": "q", "completion": "a"}], ["--preset", "alpaca"], "preset 'alpaca' is unknown"),
        ([{"prompt": "x" * 80, "completion": "a"}], [], "leaves no room for a response"),
        ([], [], "empty"),
        (
            [{"prompt": "q", "completion": "a"}],
            ["--lora", "--lora_target_modules", "query"],
            "Linear layers are named",
        ),
    ],
)
def test_bad_input_fails_before_training(tiny_model_dir, tmp_path, rows, extra, message) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=message):
        run_sft(config_of(*sft_argv(tiny_model_dir, data, tmp_path / "out", *extra)))
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="output_dir"):
        run_sft(config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, blocker / "out")))


@pytest.mark.slow
def test_two_process_accelerate_cpu_run(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    result = run_on_two_cpu_processes(
        "sft", *sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "3", "--batch_size", "4")
    )
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len([h for h in state["log_history"] if "loss" in h]) == 3
    # 64 rows, 2 processes x batch 4 x accumulation 4 = 32 a step: epoch 1.5 after 3 steps (one process: 0.75)
    assert state["epoch"] == pytest.approx(1.5), result.stdout[-2000:]
