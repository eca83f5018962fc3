"""Training runs that refuse to lie: a folder of another run, a run of 0 steps, damaged checkpoints and rotation
that never leaves only an incomplete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import d1.rl.run
import d1.sft.run
from d1.cluster import CompleteCheckpointsCallback
from d1.evaluation.files import remove_stale_temporaries
from d1.tasks import get_task
from d1.utils import (
    BEST_CHECKPOINT_NAME,
    RUN_SETTINGS_NAME,
    check_output_dir,
    checkpoint_problem,
    claim_output_dir,
    latest_complete_checkpoint,
    rotate_checkpoints,
    run_settings,
    temporary_path,
    without_stderr,
    write_atomic,
    write_json_atomic,
    write_manifest,
)
from tests.rl.test_grpo_run import config_of as grpo_config_of
from tests.rl.test_grpo_run import grpo_argv
from tests.sft.test_sft_run import config_of, sft_argv


def no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded before the error")


@pytest.fixture
def loading_fails(monkeypatch):
    """Any model load fails the test: the errors under test must come before it."""
    monkeypatch.setattr(d1.sft.run, "load_trainable_model", no_loading)
    monkeypatch.setattr(d1.rl.run, "load_trainable_model", no_loading)


def fake_checkpoint(folder, step: int, files: dict[str, int]):
    """A complete checkpoint-`step` holding `files` (name -> size in bytes)."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, size in files.items():
        (path / name).write_bytes(bytes(size))
    write_manifest(path, step)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_steps", "0"], "max_steps=0 trains nothing"),
        (["--num_epochs", "0"], r"num_train_epochs=0.0 trains nothing .* --num_epochs"),
    ],
)
def test_sft_of_zero_steps_is_refused_before_loading(
    tiny_model_dir, arithmetic_jsonl, tmp_path, loading_fails, extra, message
) -> None:
    with pytest.raises(ValueError, match=message):
        d1.sft.run.run_sft(config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, *extra)))
    assert not (tmp_path / "run").exists()


def test_grpo_of_zero_steps_is_refused_before_loading(tiny_model_dir, tmp_path, loading_fails) -> None:
    with pytest.raises(ValueError, match="max_steps=0 trains nothing"):
        d1.rl.run.run_grpo(grpo_config_of(*grpo_argv(tiny_model_dir, tmp_path, "--max_steps", "0")))


def test_folder_of_an_earlier_run_is_refused_before_loading(
    tiny_model_dir, arithmetic_jsonl, tmp_path, loading_fails
) -> None:
    """The issue's case: an old run's checkpoint-200 in the folder. A new run without resume, or a resume
    with other settings, is refused naming what differs; `auto` with the same settings resumes from it."""
    argv = sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "300")
    old = config_of(*argv)
    claim_output_dir(old, run_settings(old))
    fake_checkpoint(tmp_path / "run", 200, {"model.safetensors": 8})
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(checkpoint-200, ...\)"):
        d1.sft.run.run_sft(config_of(*argv))
    changed = config_of(*argv, "--learning_rate", "1e-3", "--resume_from_checkpoint", "auto")
    with pytest.raises(ValueError, match=r"other settings: learning_rate 0.003 -> 0.001\. Use that run's"):
        d1.sft.run.run_sft(changed)
    same = config_of(*argv, "--resume_from_checkpoint", "auto", "--logging_steps", "7", "--save_steps", "9")
    assert check_output_dir(same, run_settings(same)) == str(tmp_path / "run" / "checkpoint-200")
    both = config_of(*argv, "--resume_from_checkpoint", "auto", "--overwrite_output_dir")
    with pytest.raises(ValueError, match="contradict each other"):
        check_output_dir(both, run_settings(both))


def test_overwrite_output_dir_deletes_the_old_checkpoints(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    old = config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--learning_rate", "1"))
    claim_output_dir(old, run_settings(old))
    fake_checkpoint(tmp_path / "run", 200, {"model.safetensors": 8})
    new = config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--overwrite_output_dir"))
    assert check_output_dir(new, run_settings(new)) is None
    claim_output_dir(new, run_settings(new))
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    recorded = json.loads((tmp_path / "run" / RUN_SETTINGS_NAME).read_text())
    assert recorded["learning_rate"] == 3e-3 and "output_dir" not in recorded and "logging_steps" not in recorded


def test_damaged_checkpoints_are_skipped_naming_the_file(tmp_path, capsys) -> None:
    good = fake_checkpoint(tmp_path, 2, {"model.safetensors": 40, "0_rollout_buffer.pt": 30})
    cut = fake_checkpoint(tmp_path, 4, {"model.safetensors": 40, "0_rollout_buffer.pt": 30})
    (cut / "0_rollout_buffer.pt").write_bytes(bytes(7))
    lost = fake_checkpoint(tmp_path, 6, {"model.safetensors": 40, "1_rollout_buffer.pt": 30})
    (lost / "1_rollout_buffer.pt").unlink()
    assert checkpoint_problem(good) is None
    assert latest_complete_checkpoint(tmp_path) == str(good)
    out = capsys.readouterr().out
    assert "checkpoint-4: incomplete checkpoint (0_rollout_buffer.pt has 7 bytes, 30 expected" in out
    assert "checkpoint-6: incomplete checkpoint (1_rollout_buffer.pt is missing)" in out
    (good / "d1_complete.json").write_text('{"step": 2, "fi')
    assert checkpoint_problem(good) == "d1_complete.json is truncated"


def test_rotation_counts_only_complete_checkpoints(tmp_path) -> None:
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step, {"model.safetensors": 4})
    (tmp_path / "checkpoint-4").mkdir()  # being written
    rotate_checkpoints(tmp_path, 2, keep=[str(tmp_path / "checkpoint-1")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]
    rotate_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]


def test_save_completes_the_checkpoint_then_rotates_keeping_the_best(tmp_path) -> None:
    """`on_save`: the rank's extra file is written, then the manifest (listing it), then rotation to the user's
    save_total_limit, which the Trainer's own rotation no longer sees; the best checkpoint stays."""
    for step in (1, 2):
        fake_checkpoint(tmp_path, step, {"model.safetensors": 4})
    (tmp_path / BEST_CHECKPOINT_NAME).write_text(json.dumps({"checkpoint": str(tmp_path / "checkpoint-1")}))
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "model.safetensors").write_bytes(bytes(4))
    args = SimpleNamespace(save_total_limit=1, output_dir=str(tmp_path), should_save=True)
    callback = CompleteCheckpointsCallback(args, lambda folder: (folder / "0_buffer.pt").write_bytes(bytes(3)))
    assert args.save_total_limit is None
    callback.on_save(args, SimpleNamespace(global_step=3, best_model_checkpoint=None), None)
    manifest = json.loads((tmp_path / "checkpoint-3" / "d1_complete.json").read_text())
    assert manifest == {"step": 3, "files": {"0_buffer.pt": 3, "model.safetensors": 4}}
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-3"]


def test_synthetic_training_data_cut_off_while_written_is_not_taken(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """A kill while `synthetic_train_size` rows are written leaves no file at the data's name: the next run
    generates all of them instead of training on a truncated file."""
    config = grpo_config_of(*grpo_argv(tiny_model_dir, tmp_path))

    def killed(source, target):
        assert Path(source).read_text().startswith("Puzzle,Solution\n")  # the rows went to the temporary
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        d1.rl.run.training_rows(config, get_task("sudoku"))
    assert not list((tmp_path / "data").iterdir())
    monkeypatch.undo()
    train, validation = d1.rl.run.training_rows(config, get_task("sudoku"))
    assert len(train) + len(validation) == 64


def test_write_atomic_replaces_the_whole_file_or_leaves_the_old_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.json"
    assert write_atomic(path, "first\r\nline") == path and path.read_bytes() == b"first\r\nline"
    write_atomic(path, bytes([0, 255]))
    assert path.read_bytes() == bytes([0, 255])
    write_json_atomic(path, {"step": 3, "at": Path("x")})
    assert path.read_text() == '{\n  "step": 3,\n  "at": "x"\n}'

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, "new")
    assert json.loads(path.read_text())["step"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_one_temporary_name_for_manifests_and_stale_cleanup(tmp_path) -> None:
    """What a killed `write_atomic` leaves (`.{name}.{pid}.tmp`) is not listed in a checkpoint's manifest and is
    what `d1 eval`'s stale-temporary cleanup deletes."""
    path = tmp_path / "checkpoint-1" / "0_rollout_buffer.pt"
    path.parent.mkdir()
    left = temporary_path(path)
    assert left == path.with_name(f".0_rollout_buffer.pt.{os.getpid()}.tmp")
    left.write_bytes(bytes(5))
    write_manifest(path.parent, 1)
    assert json.loads((path.parent / "d1_complete.json").read_text())["files"] == {}
    remove_stale_temporaries(path)
    assert not left.exists()


def test_a_folder_of_this_step_from_an_earlier_run_is_incomplete_until_saved_again(tmp_path) -> None:
    """Resumed from checkpoint-2 with an earlier run's checkpoint-3 on disk: once step 3 runs, a kill while
    checkpoint-3 is rewritten must not leave the old manifest vouching for a half-overwritten folder."""
    old = fake_checkpoint(tmp_path, 3, {"model.safetensors": 4})
    args = SimpleNamespace(save_total_limit=None, output_dir=str(tmp_path), should_save=True)
    callback = CompleteCheckpointsCallback(args)
    callback.on_step_end(args, SimpleNamespace(global_step=2), None)
    assert checkpoint_problem(old) is None
    callback.on_step_end(args, SimpleNamespace(global_step=3), None)
    assert checkpoint_problem(old) == "no d1_complete.json"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_without_stderr_hides_the_fatal_git_message_of_lm_eval(tmp_path, monkeypatch, capfd) -> None:
    """lm-eval's `get_git_commit_hash` (called by `simple_evaluate`) runs `git describe`, which prints "fatal:
    not a git repository" outside one; `d1 harness` wraps it in `without_stderr`, which keeps later stderr."""
    import lm_eval.evaluator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert lm_eval.evaluator.get_git_commit_hash() is None
    assert "fatal: not a git repository" in capfd.readouterr().err
    assert without_stderr(lm_eval.evaluator.get_git_commit_hash)() is None
    print("still shown", file=sys.stderr)
    assert capfd.readouterr().err == "still shown\n"
