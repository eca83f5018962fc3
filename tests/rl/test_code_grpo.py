"""diffu-GRPO on the CPU code task (tiny_code) with DiffuCoder's rewards run in the sandbox, on the tiny
model: one process and two. IGPO's inpainting with the whole reference revealed makes rewarded rows out of the
random model's zero-reward groups, so the sandboxed rewards are non-zero and reach the update."""

from __future__ import annotations

import json

import pytest

from d1.cli.args import parse_config
from d1.cli.grpo import ALIASES
from d1.rl.config import DiffuGRPOConfig
from d1.rl.run import run_grpo
from d1.tasks.tiny_code import REFERENCE_LENGTH
from tests.conftest import require_sandbox, run_on_two_cpu_processes


@pytest.fixture(autouse=True)
def _sandbox() -> None:
    require_sandbox()


def code_argv(model_dir, out, *extra: str) -> list[str]:
    assert REFERENCE_LENGTH == 44  # 11 blocks of 4: a completion holds exactly one reference solution
    return [
        "--model_path", str(model_dir), "--output_dir", str(out), "--dataset", "tiny_code",
        "--synthetic_train_size", "16", "--system_prompt", "", "--no-lora", "--dtype", "float32",
        "--num_generations", "2", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--generation_batch_size", "4", "--num_iterations", "1", "--max_prompt_length", "96",
        "--max_completion_length", str(REFERENCE_LENGTH), "--block_length", "4", "--diffusion_steps", "11",
        "--temperature", "1.0", "--learning_rate", "1e-3", "--beta", "0.0", "--max_steps", "2",
        "--logging_steps", "1", "--save_steps", "2", "--report_to", "none", "--log_completions", "false",
        "--disable_tqdm", "true", "--seed", "5", "--zero_signal_groups", "inpaint", "--inpaint_fraction", "1.0", "1.0",
        "--inpaint_chunk_size", "1", "1", "--inpaint_free_tail", "0", "--inpaint_max_replacements", "1", *extra,
    ]  # fmt: skip


def test_grpo_on_tiny_code_earns_sandboxed_rewards(tiny_model_dir, tmp_path) -> None:
    config = parse_config(DiffuGRPOConfig, code_argv(tiny_model_dir, tmp_path), ALIASES)
    logs = run_grpo(config).state.log_history
    rollouts = [h for h in logs if "reward" in h]
    assert len(rollouts) == 2
    # a rescued group: one hinted row (the reference: code 1.0 x 2.0 + format 1.0 x 0.5) beside a zero row
    assert max(h["rewards/code_reward_func"] for h in rollouts) > 0
    assert max(h["reward"] for h in rollouts) > 0 and any(
        h["grad_norm"] > 0 for h in logs if "grad_norm" in h
    )


@pytest.mark.slow
def test_grpo_on_tiny_code_with_two_processes(tiny_model_dir, tmp_path) -> None:
    argv = code_argv(
        tiny_model_dir, tmp_path, "--per_device_train_batch_size", "2", "--generation_batch_size", "2"
    )
    run_on_two_cpu_processes("grpo", *argv)
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    rollouts = [h for h in state["log_history"] if "reward" in h]
    assert state["global_step"] == 2 and max(h["rewards/code_reward_func"] for h in rollouts) > 0
