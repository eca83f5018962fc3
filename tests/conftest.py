"""Shared fixtures: the tiny embedded model (built once per session) and the ../shared/reference folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def reference_path(*parts: str) -> Path:
    """A file under ../shared/reference, or skip the test when the reference folder is absent."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the ../shared/reference fixtures are absent beside this checkout")
    return path


def require_sandbox() -> None:
    """The code sandbox works here. As root, where `make test` installs bubblewrap, a broken one fails the test
    (a silent skip would hide it from CI); as another user the test is skipped, saying why."""
    from d1.sandbox import check_sandbox

    problem = check_sandbox()
    if problem is None:
        return
    if os.geteuid() != 0:
        pytest.skip(f"the sandbox does not work for this user (root would install bubblewrap): {problem}")
    pytest.fail(f"the sandbox does not work although `make test` installs bubblewrap: {problem}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from d1.models.presets import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_dream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from d1.models.presets import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-dream"), seed=0, family_name="dream")


@pytest.fixture(scope="session")
def tiny_llada2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from d1.models.presets import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-llada2"), seed=0, family_name="llada2")


@pytest.fixture(scope="session")
def tiny_sdar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from d1.models.presets import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-sdar"), seed=0, family_name="sdar")


@pytest.fixture(params=["llada2", "sdar"])
def block_family_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny model of each block-diffusion family in turn (LLaDA 2.x, SDAR)."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(params=["llada", "dream"])
def family_model_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny model of each family in turn, for the family-generic SFT, GRPO and eval tests."""
    return request.getfixturevalue("tiny_model_dir" if request.param == "llada" else "tiny_dream_dir")


@pytest.fixture(scope="session")
def arithmetic_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 prompt/completion rows of one-digit additions in d1's reasoning/answer format."""
    path = tmp_path_factory.mktemp("data") / "add.jsonl"
    with path.open("w") as f:
        for a in range(8):
            for b in range(8):
                row = {
                    "prompt": f"{a}+{b}?",
                    "completion": f"<reasoning>{a}+{b}={a + b}</reasoning>\n<answer>{a + b}</answer>",
                }
                f.write(json.dumps(row) + "\n")
    return path


def two_cpu_processes_launch(*d1_args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `accelerate launch --config_file configs/accelerate/cpu.yaml -m d1 ARGS`
    with 2 processes (gloo), one thread each."""
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO_ROOT / "configs/accelerate/cpu.yaml"),
        "--num_processes", "2", "--main_process_port", "0", "-m", "d1", *d1_args,
    ]  # fmt: skip
    return launch, {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run_on_two_cpu_processes(*d1_args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`d1 ARGS` on 2 CPU processes (two_cpu_processes_launch), as a user would; fails the test with the end
    of stderr when the run fails."""
    launch, env = two_cpu_processes_launch(*d1_args)
    result = subprocess.run(launch, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_harness_answers_as_eval(lm: Any) -> None:
    """`D1HarnessLM.generate_until` gives, for three GSM8K prompts of different lengths, the texts `d1 eval`'s
    `generate_answers` writes with the harness's own sampler options and seed."""
    from d1.evaluation.generation import generate_answers
    from d1.tasks import get_task

    items = [{"question": q, "ground_truth": 1.0} for q in ("2+2?", "a longer one, 3*3?", "7-1?")]
    records = generate_answers(
        lm.model, lm.tokenizer, get_task("gsm8k"), items, lm.sampler, batch_size=2, seed=3, system_prompt="",
        keep_special_tokens=False, mask_token_id=lm.mask_token_id,
    )  # fmt: skip

    class Request:
        def __init__(self, prompt: str) -> None:
            self.args = (prompt, {"until": []})

    assert lm.generate_until([Request(r["prompt_input"]) for r in records]) == [r["generations"] for r in records]
