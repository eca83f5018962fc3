"""Bad input, as a hostile user gives it, ends in one `d1 <cmd>: error: ...` line naming the field or file,
the value and the fix, before any model loads; never a traceback, and never a silently wrong run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from d1.cli.main import COMMANDS, main
from d1.models.loading import check_weight_files, load_model, resolve_mask_token_id


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `d1 ARGV` in-process; it must fail with exit code 1 and end with one error line, which is returned
    (progress bars may come before it)."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"d1 {argv[0]}: error: ") and "Traceback" not in err, err
    return line


def _sft(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model_name", str(model_dir), "--train_data", str(data), "--output_dir", str(out),
            "--max_length", "64", "--max_steps", "1", "--report_to", "none", *extra]  # fmt: skip


def _never_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the errors under test must come before it."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("d1.sft.run.load_trainable_model", fail)
    monkeypatch.setattr("d1.rl.run.load_trainable_model", fail)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--grad_accum_steps", "0"], "gradient_accumulation_steps (--grad_accum_steps)=0"),
        (["--batch_size", "0"], "per_device_train_batch_size (--batch_size)=0"),
        (["--eval_fraction", "1"], "eval_fraction=1.0 must be in [0, 1)"),
        (["--eval_fraction", "-0.5"], "eval_fraction=-0.5 must be in [0, 1)"),
        (["--mask_token_id", "100000"], "mask token id 100000 (from --mask_token_id) is outside"),
        (["--noise_range_high", "1.5"], "noise_range_low=0.3, noise_range_high=1.5: need 0 <= low <= high <= 1"),
        (["--block_length", "8"], "block_length=8: llada is a full-attention model"),
    ],
)
def test_sft_settings_refused_before_loading(
    flags: list[str], named: str, tiny_model_dir: Path, arithmetic_jsonl: Path, tmp_path: Path, capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _never_load(monkeypatch)
    assert named in _error(capsys, _sft(tiny_model_dir, arithmetic_jsonl, tmp_path, *flags))


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size=0 must be at least 1"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps=0 must be at least 1"),
        (["--mask_token_id", "-1"], "mask token id -1 (from --mask_token_id) is outside"),
    ],
)
def test_grpo_settings_refused_before_loading(
    flags: list[str], named: str, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _never_load(monkeypatch)
    argv = ["grpo", "--model_path", str(tiny_model_dir), "--dataset", "sudoku", "--synthetic_train_size", "8",
            "--output_dir", str(tmp_path), "--report_to", "none", "--num_generations", "2",
            "--max_completion_length", "16", "--block_length", "8", "--diffusion_steps", "8", *flags]  # fmt: skip
    assert named in _error(capsys, argv)


def test_mask_token_checked_against_the_embedding_table(tiny_model_dir: Path) -> None:
    from d1.models.loading import load_config, load_tokenizer

    config, tokenizer = load_config(tiny_model_dir), load_tokenizer(tiny_model_dir)
    last = config.embedding_size - 1
    assert resolve_mask_token_id(tokenizer, config, last) == last
    assert resolve_mask_token_id(tokenizer, config) == tokenizer.mask_token_id
    with pytest.raises(ValueError, match=rf"outside the model's vocabulary of {last + 1} tokens"):
        resolve_mask_token_id(tokenizer, config, last + 1)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("- learning_rate\n- 1e-5\n", "holds a list, not a mapping of options"),
        ("learning_rate: 1e-5\nlora: [true\nseed: 1\n", "is not valid YAML at line 3, column 5"),
        ("seed: 1\n\tlora: false\n", "is not valid YAML at line 2, column 1"),
    ],
)
def test_yaml_config_errors_name_the_file_and_line(text: str, named: str, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert f"--config '{config}' {named}" in _error(capsys, ["sft", "--config", str(config)])
    assert f"--config_file '{config}' {named}" in _error(capsys, ["launch-check", "--config_file", str(config)])


def test_truncated_safetensors_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    check_weight_files(model)  # the intact copy passes
    weights = model / "model.safetensors"
    for size in (weights.stat().st_size - 1, 100, 4):
        os.truncate(weights, size)
        with pytest.raises(ValueError, match="Copy or download the model again") as err:
            load_model(model)
        assert str(err.value).startswith(f"{weights} is truncated or corrupt: ")


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "named"),
    [
        (
            [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": None}, {"prompt": "c", "completion": " "}],
            ": every row's response is empty or null (rows 0, 1, 2)",
        ),
        (
            [{"prompt": "a", "completion": "ok"}, {"prompt": {"x": 1}, "completion": "ok"}],
            " row 1: field 'prompt' is of type dict ({'x': 1}), not text",
        ),
        ([{"prompt": "a", "completion": 5}], " row 0: field 'completion' is of type int (5), not text"),
        ([{"prompt": None, "completion": "ok"}], " row 0: field 'prompt' is null, not text"),
        (
            [{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}],
            " row 0: field 'messages[0].content' is of type int (3), not text",
        ),
        ([{"messages": "hi"}], " row 0: field 'messages' is of type str ('hi'), not a list of"),
    ],
)
def test_sft_rows_without_text_refused(
    rows: list[object], named: str, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _never_load(monkeypatch)
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    assert f"{data}'{named}" in _error(capsys, _sft(tiny_model_dir, data, tmp_path / "out"))


def test_text_preset_refuses_null_text(tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    _never_load(monkeypatch)
    data = _jsonl(tmp_path / "text.jsonl", [{"text": "abc"}, {"text": None}])
    err = _error(capsys, _sft(tiny_model_dir, data, tmp_path / "out", "--preset", "text"))
    assert f"{data}' row 1: field 'text' is null, not text" in err


@pytest.mark.parametrize(
    ("name", "content", "named"),
    [
        ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "\xff"}\n', "line 3 is not UTF-8 text (byte 0xff)"),
        ("a.csv", b"prompt,completion\na,b\nc,\xe9t\xe9\n", "line 3 is not UTF-8 text (byte 0xe9)"),
        ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n', "line 2 is not valid JSON"),
        ("a.json", b'[{"prompt": "a",\n "completion": "b"}\n {"prompt": "c"}]', "line 3 is not valid JSON"),
        ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n[1, 2]\n', "line 2 is [1, 2], not a JSON object"),
    ],
)
def test_unreadable_data_files_name_the_line(
    name: str, content: bytes, named: str, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from d1.tasks.base import read_records

    _never_load(monkeypatch)
    data = tmp_path / name
    data.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_records(data)
    assert str(err.value).startswith(f"{data}: {named}")
    assert f"error: {data}: {named}" in _error(capsys, _sft(tiny_model_dir, data, tmp_path / "out"))


def test_bad_countdown_row_named(tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    _never_load(monkeypatch)
    data = _jsonl(tmp_path / "cd.jsonl", [{"input": "1,2,3", "output": "6"}, {"input": "1,x,3", "output": "6"}])
    argv = ["grpo", "--model_path", str(tiny_model_dir), "--dataset", "countdown", "--data_path", str(data),
            "--output_dir", str(tmp_path / "out"), "--num_generations", "2", "--per_device_train_batch_size", "2",
            "--report_to", "none"]  # fmt: skip
    err = _error(capsys, argv)
    assert f"{data}: row 1 is not a Countdown problem of whole numbers (invalid literal" in err


def test_utf8_check_across_read_chunks(tmp_path: Path) -> None:
    from d1.tasks.base import check_utf8

    path = tmp_path / "big.jsonl"
    straddling = b"a" * ((1 << 20) - 1) + "é\n".encode() + b"ok\n"  # "é" spans the 1 MiB read boundary
    path.write_bytes(straddling)
    check_utf8(path)
    path.write_bytes(straddling + b"\xff\n")
    with pytest.raises(ValueError, match=r"big.jsonl: line 3 is not UTF-8 text \(byte 0xff\)"):
        check_utf8(path)
    path.write_bytes(straddling + b"\xc3")  # cut inside a character at the end
    with pytest.raises(ValueError, match=r"big.jsonl: line 3 is not UTF-8 text \(byte 0xc3\)"):
        check_utf8(path)


def test_init_model_keeps_an_existing_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    assert main(["init-model", "--output", str(out), "--seed", "1"]) == 0
    weights = (out / "model.safetensors").read_bytes()
    err = _error(capsys, ["init-model", "--output", str(out), "--seed", "2"])
    assert f"--output '{out}' already holds a model (config.json, model.safetensors)" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(["init-model", "--output", str(out), "--seed", "2", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != weights


@pytest.mark.parametrize("task", ["sudoku", "countdown"])
def test_data_make_writes_the_format_its_extension_names(task: str, tmp_path: Path, capsys) -> None:
    from d1.tasks import get_task

    columns = {"sudoku": ["Puzzle", "Solution"], "countdown": ["input", "output"]}[task]
    first_columns = {
        ".csv": lambda text: text.split("\n")[0].split(","),
        ".jsonl": lambda text: list(json.loads(text.split("\n")[0])),
        ".json": lambda text: list(json.loads(text)[0]),
    }
    loaded = []
    for suffix, columns_of in first_columns.items():
        path = tmp_path / f"{task}{suffix}"
        assert main(["data", "make", task, "--n", "4", "--seed", "3", "--output", str(path)]) == 0
        assert columns_of(path.read_text()) == columns
        loaded.append(get_task(task).load_test(path))
    assert loaded[0] == loaded[1] == loaded[2] and len(loaded[0]) == 4
    bad = tmp_path / f"{task}.safetensors"
    err = _error(capsys, ["data", "make", task, "--n", "4", "--output", str(bad)])
    assert f"output='{bad}': the extension names the file format; use .csv, .jsonl or .json" in err
    assert not bad.exists()
