"""(e) The SLURM templates: `bash -n`, shellcheck (when installed), and dry runs whose printed commands,
run by hand on this machine with the cpu config and the tiny model, work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "scripts" / "slurm"
TEMPLATES = sorted(SLURM.glob("*.sbatch"))
NO_SLURM = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def dry_run(template: str, **settings: str) -> str:
    env = {**NO_SLURM, "D1_REPO": str(REPO), "ENV_ACTIVATE": "", "PYTHON": sys.executable, **settings}
    result = subprocess.run(
        ["bash", str(SLURM / template), "--dry-run"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_templates_parse() -> None:
    assert {t.name for t in TEMPLATES} >= {
        "sft.sbatch",
        "grpo.sbatch",
        "eval.sbatch",
        "multinode.sbatch",
        "vista_sft.sbatch",
    }
    for script in [*TEMPLATES, SLURM / "common.sh"]:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        text = script.read_text()
        assert script.suffix != ".sbatch" or (
            "#SBATCH --signal=B:USR1@" in text
            and "resume_from_checkpoint auto" in text
            or "eval" in script.name
        )


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, TEMPLATES), str(SLURM / "common.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("template", [t.name for t in TEMPLATES])
def test_dry_run_prints_without_running(template, tmp_path) -> None:
    out = dry_run(
        template, OUTPUT_DIR=str(tmp_path / "out"), SCRATCH=str(tmp_path), WORK=str(tmp_path / "work")
    )
    assert "accelerate.commands.launch" in out and "launch-check" in out
    assert not (tmp_path / "out").exists()  # nothing ran, not even mkdir


@pytest.mark.slow
def test_sft_dry_run_commands_run_by_hand(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    out = dry_run(
        "sft.sbatch",
        ACCELERATE_CONFIG="configs/accelerate/cpu.yaml", NUM_PROCESSES="2", MAIN_PROCESS_PORT="0",
        MODEL=str(tiny_model_dir), TRAIN_DATA=str(arithmetic_jsonl), OUTPUT_DIR=str(tmp_path / "out"),
        JOB_NAME="run", BATCH_SIZE="4", GRAD_ACCUM_STEPS="1", MAX_LENGTH="48", HF_HOME=str(tmp_path / "hf"),
        EXTRA_ARGS="--max_steps 2 --save_steps 1 --no-lora --debugging --report_to none --eval_fraction 0",
    )  # fmt: skip
    print(out)
    env = {**NO_SLURM, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", out], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok: configs/accelerate/cpu.yaml runs 2 CPU (gloo)" in result.stdout
    state_file = tmp_path / "out" / "run" / "checkpoint-2" / "trainer_state.json"
    assert json.loads(state_file.read_text())["global_step"] == 2
    written = state_file.stat().st_mtime_ns
    again = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", out], capture_output=True, text=True, env=env, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    # the resubmission resumed from checkpoint-2 (a fresh start would have rewritten it); transformers then
    # takes one more step before it checks max_steps
    assert state_file.stat().st_mtime_ns == written
    resumed = json.loads((tmp_path / "out" / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert resumed["global_step"] == 3


def test_multinode_dry_run_without_slurm(tmp_path) -> None:
    out = dry_run("multinode.sbatch", OUTPUT_DIR=str(tmp_path))
    launch = out.strip().splitlines()[-1]
    assert launch.startswith("env SLURM_NODEID=0 bash -c ")
    assert "--num_machines 1" in launch and "--main_process_ip localhost" in launch
    assert '--machine_rank "$SLURM_NODEID"' in launch


def test_vista_dry_run(tmp_path) -> None:
    out = dry_run("vista_sft.sbatch", SCRATCH=str(tmp_path / "scratch"), WORK=str(tmp_path / "work"))
    for expected in (
        "module load gcc cuda", f"export HF_HOME={tmp_path}/scratch/huggingface_cache", "export HF_HUB_OFFLINE=1",
        "--model_path GSAI-ML/LLaDA-8B-Instruct --train_data AI-MO/NuminaMath-LEAN --max_length 2048 --batch_size 1 "
        "--num_epochs 1 --learning_rate 1e-5", "--debugging", f"cp -r {tmp_path}/scratch/d1_training/output/numina-lean-sft {tmp_path}/work/d1_outputs/",
    ):  # fmt: skip
        assert expected in out, expected
