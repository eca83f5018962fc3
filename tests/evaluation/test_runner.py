"""The eval runner: the pure `generate_answers` core, d1-format files, resumption, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from d1.diffusion.samplers import LLaDAOptions
from d1.evaluation import config as eval_config
from d1.evaluation import generation, runner
from d1.evaluation.config import EvalConfig, output_path
from d1.evaluation.generation import generate_answers
from d1.evaluation.runner import run_eval
from d1.models.loading import apply_lora, load_model, load_tokenizer
from d1.models.presets import init_model
from d1.tasks import get_task
from d1.tasks.synthetic import make_dataset

SETTINGS = {"gen_length": 16, "block_length": 8, "diffusion_steps": 8}


@pytest.fixture(scope="module")
def sudoku_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("sudoku", 6, 0, tmp_path_factory.mktemp("data") / "sudoku.csv")


@pytest.fixture(scope="module")
def countdown_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("countdown", 3, 0, tmp_path_factory.mktemp("data") / "countdown.jsonl")


@pytest.fixture()
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any model weights are loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(runner, "load_model", refuse)


def _config(model_dir: Path, data: Path, out: Path, **overrides) -> EvalConfig:
    values = {
        "model_path": str(model_dir),
        "dataset": "sudoku",
        "data_path": str(data),
        "output_dir": str(out),
    }
    return EvalConfig(**{**values, **SETTINGS, "batch_size": 4, **overrides})


def _generations(path: Path) -> list[dict]:
    return json.loads(path.read_text())["generations"]


SMALL = LLaDAOptions(gen_length=16, block_length=8, diffusion_steps=8)


def test_generate_answers_records_and_stats(family_model_dir: Path, countdown_jsonl: Path) -> None:
    tokenizer = load_tokenizer(family_model_dir)
    model = load_model(family_model_dir).eval()
    task = get_task("countdown")
    items = task.load_test(countdown_jsonl)
    assert len({len(tokenizer(task.build_prompt(tokenizer, i["question"]))["input_ids"]) for i in items}) > 1
    batches: list[int] = []
    stats: dict[str, float] = {}
    records = generate_answers(
        model, tokenizer, task, items, SMALL, batch_size=2,
        progress=lambda new, batch_stats: batches.append(len(new)), stats=stats,
    )  # fmt: skip
    assert batches == [2, 1]
    assert stats["forward_passes"] == 16 and stats["generated_tokens"] == 48 and stats["batches"] == 2
    assert [r["question"] for r in records] == [i["question"] for i in items]
    assert [r["ground_truth"] for r in records] == [i["ground_truth"] for i in items]
    assert records[0]["prompt_input"] == task.build_prompt(tokenizer, items[0]["question"])
    assert all(isinstance(r["generations"], str) for r in records)
    # Left padding with an attention mask: a batched prompt decodes as it does alone.
    alone = [
        generate_answers(model, tokenizer, task, [item], SMALL)[0]
        for item in items
    ]
    assert [r["generations"] for r in alone] == [r["generations"] for r in records]


def test_sampling_seeded_per_item_index(tiny_model_dir: Path, sudoku_csv: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir).eval()
    task = get_task("sudoku")
    items = task.load_test(sudoku_csv)[:4]
    options = dataclasses.replace(SMALL, temperature=1.0)
    kwargs = {"seed": 3, "batch_size": 2}
    whole = generate_answers(model, tokenizer, task, items, options, **kwargs)
    assert whole == generate_answers(model, tokenizer, task, items, options, **kwargs)
    tail = generate_answers(model, tokenizer, task, items[2:], options, indices=[2, 3], **kwargs)
    assert tail == whole[2:]  # a resumed run draws the same noise for the same items
    other = generate_answers(model, tokenizer, task, items, options, **{**kwargs, "seed": 4})
    assert other != whole


def test_run_eval_writes_d1_file(family_model_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    config = _config(family_model_dir, sudoku_csv, tmp_path / "out")
    path = run_eval(config)
    assert path.name == f"sudoku_{family_model_dir.name}_16_8_0_generations.json"
    data = json.loads(path.read_text())
    assert list(data) == [
        "generations", "metrics", "model_path", "checkpoint_path", "gen_length", "diffusion_steps",
        "block_length", "settings",
    ]  # fmt: skip
    settings = data["settings"]
    assert settings["temperature"] == 0.0 and settings["remasking"] == "low_confidence"
    assert (settings["diffusion_steps"], settings["batch_size"], settings["world_size"], settings["seed"]) == (8, 4, 1, 42)
    assert settings["test_items"] == 6 and settings["data_path"] == str(sudoku_csv)
    assert len(settings["weights_fingerprint"]) == 16 and settings["mask_token_id"] is not None
    assert (data["gen_length"], data["diffusion_steps"], data["block_length"]) == (16, 8, 8)
    assert data["checkpoint_path"] == "" and data["model_path"] == str(family_model_dir)
    metrics = data["metrics"]
    assert metrics["total_processed"] == 6 and metrics["generated_tokens"] == 96
    assert metrics["forward_passes"] == 16 and metrics["tokens_per_second"] > 0 and metrics["wall_time"] > 0
    assert [set(r) for r in data["generations"]] == [
        {"question", "prompt_input", "generations", "ground_truth"}
    ] * 6
    assert not list(path.parent.glob(".*.tmp"))
    assert EvalConfig(gen_length=256).steps == 128  # d1: diffusion_steps = gen_length / 2


def test_interrupted_run_resumes_to_identical_file(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {"temperature": 0.8, "batch_size": 2}
    reference = _generations(run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path / "whole", **overrides)))

    real_sample, calls = generation.sample, []

    def crash_after_first_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    config = _config(tiny_model_dir, sudoku_csv, tmp_path / "killed", **overrides)
    monkeypatch.setattr(generation, "sample", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config)
    monkeypatch.setattr(generation, "sample", real_sample)
    assert _generations(output_path(config, 0)) == reference[:2]
    path = run_eval(config)
    assert _generations(path) == reference
    assert json.loads(path.read_text())["metrics"]["total_processed"] == 6

    # A file cut back to its first batch (by hand) also completes to the same content.
    data = json.loads(path.read_text())
    data["generations"] = data["generations"][:2]
    path.write_text(json.dumps(data))
    assert _generations(run_eval(config)) == reference
    # A complete file is left alone without loading the model.
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("model loaded for a finished run"))
    assert _generations(run_eval(config)) == reference


def _refuse_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))


CHANGED_SETTINGS = [
    {"temperature": 0.7}, {"remasking": "random"}, {"seed": 1}, {"system_prompt": ""}, {"cfg_scale": 1.0},
    {"batch_size": 2}, {"unmask": "threshold"}, {"threshold": 0.5}, {"early_stop": True}, {"cache": "dual"},
    {"keep_special_tokens": False}, {"subsample": 4}, {"dtype": "float32"}, {"mask_token_id": 7},
]  # fmt: skip


def test_resume_refuses_other_settings_naming_them(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path))
    before = path.read_text()
    _refuse_model_loading(monkeypatch)
    for change in CHANGED_SETTINGS:
        ((key, value),) = change.items()
        old = json.loads(before)["settings"][key]
        with pytest.raises(ValueError, match="other settings") as caught:
            run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, **change))
        message = str(caught.value)
        assert f"{key}={old!r} (now {value!r})" in message and "--overwrite" in message, message
        assert str(path) in message
    assert path.read_text() == before  # nothing was written into the file


def test_resume_refuses_changed_data_weights_and_world_size(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "test.csv"
    data.write_text(sudoku_csv.read_text())
    model = init_model("tiny", tmp_path / "model", seed=0)
    config = _config(model, data, tmp_path / "out")
    path = run_eval(config)
    _refuse_model_loading(monkeypatch)
    assert run_eval(config) == path  # same settings: resumes (here: nothing left to do)

    lines = sudoku_csv.read_text().splitlines()
    data.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")  # same rows, other order
    with pytest.raises(ValueError, match="test_items_sha256="):
        run_eval(config)
    data.write_text(sudoku_csv.read_text())

    init_model("tiny", model, seed=1)  # retrained in place: same names and sizes, other weights
    with pytest.raises(ValueError, match="weights_fingerprint="):
        run_eval(config)
    init_model("tiny", model, seed=0)
    assert run_eval(config) == path

    # A rank file of an earlier two-process run beside it would be scored with this run's file.
    other = json.loads(path.read_text())
    other["settings"]["world_size"] = 2
    output_path(config, 1).write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"_1_generations.json was written with other settings: world_size=2"):
        run_eval(config)


def test_files_without_settings_or_corrupt_are_refused_and_overwrite_starts_over(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_model_dir, sudoku_csv, tmp_path)
    reference = _generations(run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path / "fresh")))
    path = output_path(config, 0)
    record = {"question": "another question", "prompt_input": "", "generations": "", "ground_truth": "1" * 16}
    header = {"model_path": str(tiny_model_dir), "checkpoint_path": "", **SETTINGS, "block_length": 8}
    path.write_text(json.dumps({"generations": [record], "metrics": {}, **header}))  # d1's own format
    with monkeypatch.context() as patch:
        _refuse_model_loading(patch)
        with pytest.raises(ValueError, match=r"records no settings.*--overwrite"):
            run_eval(config)
        path.write_text('{"generations": [{"question": "q", "prompt')  # cut by hand
        with pytest.raises(ValueError, match=rf"{path}: not valid JSON.*--overwrite to start over"):
            run_eval(config)
    stale = output_path(config, 1)
    stale.write_text(path.read_text())
    (tmp_path / f".{path.name}.99999.tmp").write_text("left by a killed run")
    assert _generations(run_eval(dataclasses.replace(config, overwrite=True))) == reference
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "mmlu"}, "known tasks: acecode, countdown, gsm8k, humaneval, math, math500, mbpp, sudoku"),
        ({"block_length": 5}, "multiple of block_length=5"),
        ({"diffusion_steps": 7}, "multiple of the number of blocks 2"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"remasking": "entropy"}, "remasking='entropy'"),
        ({"model_label": "a/b"}, "without path separators"),
        ({"data_path": "/nonexistent/test.csv"}, "no such file"),
        ({"subsample": 7}, "subsample=7"),
        ({"subsample": 0}, "subsample=0 must be -1"),
        ({"subsample": -2}, "subsample=-2 must be -1"),
        ({"seed": -1}, "seed=-1"),
        ({"dtype": "fp8"}, "dtype='fp8'"),
        ({"temperature": float("inf")}, "temperature=inf must be a finite"),
        ({"threshold": float("nan")}, "threshold=nan"),
        ({"mask_token_id": 10**6}, "mask token id 1000000 \\(from --mask_token_id\\) is outside the model's vocabulary"),
        ({"data_path": "/tmp"}, "a folder, not a file"),
    ],
)
def test_bad_settings_fail_before_loading(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, no_model_load: None, overrides, message
) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, **overrides))


def test_bad_checkpoint_and_empty_data_fail_before_loading(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, no_model_load: None
) -> None:
    junk = tmp_path / "sft_output"
    (junk / "checkpoint-10").mkdir(parents=True)
    (junk / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"neither a LoRA adapter.*checkpoint-10"):
        run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, checkpoint_path=str(junk)))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path, checkpoint_path=str(tmp_path / "missing")))
    empty = tmp_path / "empty.csv"
    empty.write_text("Puzzle,Solution\n")
    with pytest.raises(ValueError, match="no test items"):
        run_eval(_config(tiny_model_dir, empty, tmp_path))


def test_lora_checkpoint_is_applied(tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    peft_model = apply_lora(load_model(tiny_model_dir), r=4, lora_alpha=8, lora_dropout=0.0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1.0)  # peft starts B at zero, which would change nothing
    adapter = tmp_path / "run" / "checkpoint-5"
    peft_model.save_pretrained(adapter)

    config = _config(tiny_model_dir, sudoku_csv, tmp_path / "out", checkpoint_path=str(adapter))
    path = run_eval(config)
    assert path.name == f"sudoku_{tiny_model_dir.name}_run_checkpoint-5_16_8_0_generations.json"
    assert json.loads(path.read_text())["checkpoint_path"] == str(adapter)
    task, tokenizer = get_task("sudoku"), load_tokenizer(tiny_model_dir)
    items = task.load_test(sudoku_csv)
    expected = generate_answers(
        peft_model.eval(), tokenizer, task, items, SMALL
    )
    base = _generations(run_eval(_config(tiny_model_dir, sudoku_csv, tmp_path / "base")))
    assert _generations(path) == expected
    assert [r["generations"] for r in expected] != [r["generations"] for r in base]


def test_full_model_checkpoint_replaces_model_path(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path
) -> None:
    other = init_model("tiny", tmp_path / "trained" / "final", seed=1)
    with_checkpoint = run_eval(
        _config(tiny_model_dir, sudoku_csv, tmp_path / "a", checkpoint_path=str(other))
    )
    direct = run_eval(_config(other, sudoku_csv, tmp_path / "b"))
    assert "_trained_final_" in with_checkpoint.name
    assert _generations(with_checkpoint) == _generations(direct)


def test_default_model_label() -> None:
    label = eval_config.default_model_label
    assert label(EvalConfig(model_path="GSAI-ML/LLaDA-8B-Instruct")) == "instruct"
    assert label(EvalConfig(model_path="GSAI-ML/LLaDA-8B-Base")) == "base"
    assert label(EvalConfig(model_path="/models/tiny/")) == "tiny"
    config = EvalConfig(model_path="x/LLaDA-8B-Instruct", checkpoint_path="sft/ckpt-100/", few_shot=3)
    assert label(config) == "instruct_sft_ckpt-100_fs3"
    assert (
        output_path(EvalConfig(dataset="math", model_label="m"), 2).name
        == "math500_m_128_64_2_generations.json"
    )


def test_cached_parallel_eval_options_reach_the_sampler(tiny_model_dir, tmp_path) -> None:
    config = EvalConfig(model_path=str(tiny_model_dir), cache="dual", unmask="threshold", threshold=0.5)
    assert config.options() == LLaDAOptions(cache="dual", unmask="threshold", threshold=0.5)
    assert config.options().generate_kwargs()["cache"] == "dual"
    assert EvalConfig(model_path=str(tiny_model_dir), cache="none").options().generate_kwargs()["cache"] is None
    with pytest.raises(ValueError, match="cache='kv'"):
        EvalConfig(model_path=str(tiny_model_dir), cache="kv").options()


def test_a_file_of_the_former_parallel_rule_is_not_resumed(
    tiny_model_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threshold decoding used to stop after steps / num_blocks passes a block: such a file (no settings version)
    would mix two samplers' generations, so the resume check refuses it and says why."""
    config = _config(tiny_model_dir, sudoku_csv, tmp_path, unmask="threshold", threshold=0.5)
    path = run_eval(config)
    data = json.loads(path.read_text())
    assert data["settings"]["settings_version"] == 2
    del data["settings"]["settings_version"]
    data["generations"] = data["generations"][:2]
    path.write_text(json.dumps(data))
    _refuse_model_loading(monkeypatch)
    with pytest.raises(ValueError, match=r"older d1, whose parallel decoding stopped after steps / num_blocks"):
        run_eval(config)


def test_a_missing_model_is_reported_as_such_before_any_sampler_check(
    sudoku_csv: Path, tmp_path: Path, no_model_load: None
) -> None:
    """The model path comes first: its family decides the sampler, so a sampler error would be a guess."""
    config = _config(tmp_path / "absent-model", sudoku_csv, tmp_path / "out", block_length=5)
    with pytest.raises(FileNotFoundError, match="absent-model'.*no such file or folder"):
        run_eval(config)
