"""The block-diffusion families (LLaDA 2.x, SDAR) through every command, with no family flag: `d1 eval` (their
sampler and their reports' threshold by default, traces and `d1 trace`), the harness (answers equal eval's),
LLaDA's sampler options refused before loading, `d1 grpo`'s full-attention estimators refused; for LLaDA 2.x
also `d1 chat` live and a 2-process block-diffusion LoRA SFT step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from d1.cli.main import main
from d1.evaluation import runner
from d1.evaluation.config import EvalConfig
from d1.evaluation.runner import run_eval
from d1.models.families import Family, family_of
from d1.models.loading import load_config
from d1.tasks.synthetic import make_dataset
from tests.cli.test_chat import PROMPT, Terminal
from tests.conftest import assert_harness_answers_as_eval, run_on_two_cpu_processes
from tests.sft.test_sft_run import sft_argv


@pytest.fixture(scope="module")
def sudoku_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("sudoku", 3, 0, tmp_path_factory.mktemp("data") / "sudoku.csv")


def _eval_argv(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model_path", str(model_dir), "--dataset", "sudoku", "--data_path", str(data),
            "--output_dir", str(out), "--gen_length", "16", "--block_length", "4", "--diffusion_steps", "8",
            "--batch_size", "2", *extra]  # fmt: skip


def _family(model_dir: Path) -> Family:
    found = family_of(load_config(str(model_dir)))
    assert found is not None
    return found


def test_eval_uses_the_family_sampler_and_traces_replay(block_family_dir: Path, sudoku_csv: Path, tmp_path: Path) -> None:
    from d1.diffusion.trace import row_from_dict
    from d1.evaluation.traces import read_traces, traces_path
    from d1.viz.html import write_trace_html

    assert main(_eval_argv(block_family_dir, sudoku_csv, tmp_path, "--save_traces", "2")) == 0
    (path,) = tmp_path.glob("*_generations.json")
    data = json.loads(path.read_text())
    settings = data["settings"]
    threshold = _family(block_family_dir).sampler_defaults["threshold"]
    assert (settings["sampler"], settings["unmask"], settings["threshold"]) == ("block_diffusion", "threshold", threshold)
    assert not {"remasking", "cache", "alg"} & set(settings) and len(data["generations"]) == 3
    for item in read_traces(traces_path(path)):
        row = row_from_dict(item["trace"])
        assert sorted(p for step in row.steps for p in step.positions) + row.filled == sorted(
            set(range(16)) - set(row.filled)
        ) + row.filled
    page = write_trace_html(traces_path(path), tmp_path / "trace.html")
    assert "d1 trace" in page.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--remasking", "random"], r"remasking='random': option\(s\) of sampler\(s\) \['llada'\]"),
        (["--cache", "dual"], r"cache='dual': option\(s\) of sampler\(s\) \['fastdllm_dream', 'llada'\]"),
        (["--unmask", "factor"], r"unmask='factor': sampler 'block_diffusion'"),
    ],
)
def test_other_samplers_options_refused_before_loading(
    block_family_dir: Path, sudoku_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra, message
) -> None:
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
    config = EvalConfig(model_path=str(block_family_dir), dataset="sudoku", data_path=str(sudoku_csv),
                        output_dir=str(tmp_path), gen_length=16, block_length=8,
                        **dict(zip([a.lstrip("-") for a in extra[::2]], extra[1::2], strict=True)))  # fmt: skip
    with pytest.raises(ValueError, match=message):
        run_eval(config)


def test_harness_answers_as_eval(block_family_dir: Path) -> None:
    from d1.evaluation.harness import D1HarnessLM

    lm = D1HarnessLM(pretrained=str(block_family_dir), device="cpu", batch_size=2, seed=3, gen_length="16",
                     block_length="4", steps="8", temperature="0.7")  # fmt: skip
    threshold = _family(block_family_dir).sampler_defaults["threshold"]
    assert (lm.sampler.name, lm.sampler.threshold, lm.sampler.unmask) == ("block_diffusion", threshold, "threshold")
    assert_harness_answers_as_eval(lm)


def test_grpo_refuses_full_attention_estimators_on_a_block_diffusion_model(block_family_dir: Path, tmp_path: Path) -> None:
    from d1.cli.args import parse_config
    from d1.rl.config import DiffuGRPOConfig
    from d1.rl.run import run_grpo

    config = parse_config(DiffuGRPOConfig, ["--model_path", str(block_family_dir), "--dataset", "sudoku",
                                            "--output_dir", str(tmp_path), "--report_to", "none"])  # fmt: skip
    with pytest.raises(ValueError, match="'one_step' assumes full attention.*block-diffusion model.*block_elbo"):
        run_grpo(config)


def test_chat_denoises_live(tiny_llada2_dir: Path) -> None:
    term = Terminal("--model_path", str(tiny_llada2_dir), "--gen_length", "16", "--block_length", "8", "--steps", "8")
    try:
        term.expect(PROMPT)
        term.send(b"hello there\n")
        turn = term.expect(PROMPT)
        assert re.search(rb"\d+ steps", turn)
        term.send(b"\x04")
        assert term.close() == 0
    finally:
        term.process.kill()


@pytest.mark.slow
def test_two_process_lora_sft_step(tiny_llada2_dir: Path, arithmetic_jsonl: Path, tmp_path: Path) -> None:
    """LoRA on every projection d1 grpo adapts by default (attention, dense MLP, shared and routed experts),
    through `d1 sft` on two processes: routed experts a short pass does not reach still count as called."""
    from safetensors import safe_open

    from d1.models.families import FAMILIES

    targets = FAMILIES["llada2"].lora_targets
    argv = [a for a in sft_argv(tiny_llada2_dir, arithmetic_jsonl, tmp_path, "--max_steps", "1") if a != "--no-lora"]
    run_on_two_cpu_processes("sft", *argv, "--lora_r", "4", "--lora_alpha", "8", "--batch_size", "4",
                             "--block_length", "16", "--lora_target_modules", *targets)  # fmt: skip
    with safe_open(tmp_path / "run" / "adapter_model.safetensors", "pt") as adapter:
        names = {name.split(".lora_")[0] for name in adapter.keys()}
    assert {name.rsplit(".", 1)[-1] for name in names} == set(targets)
    assert any(".mlp.experts.7." in name for name in names) and any(".shared_experts." in name for name in names)
    state = json.loads((tmp_path / "run" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["log_history"][0]["loss"] > 0


def test_sft_default_lora_targets_are_the_family_attention(tiny_llada2_dir: Path) -> None:
    from types import SimpleNamespace

    from d1.models.loading import lora_targets
    from d1.rl.config import DiffuGRPOConfig
    from d1.sft.config import SFTConfig

    config = load_config(str(tiny_llada2_dir))
    for cls, expected in ((SFTConfig, ["query_key_value"]), (DiffuGRPOConfig, ["query_key_value", "dense"])):
        args = SimpleNamespace(lora_target_modules=[], lora_scope=cls.lora_scope)
        assert lora_targets(config, args)[: len(expected)] == expected


@pytest.mark.parametrize("given", [[], ["--unmask", "schedule"], ["--threshold", "0.9"], ["--unmask", "threshold"]])
def test_an_option_the_user_gives_beats_the_family_default_even_when_it_equals_the_registrys(
    block_family_dir: Path, tmp_path: Path, given: list[str]
) -> None:
    """The family's defaults (unmask=threshold at its threshold) replace only options nobody set: `--unmask
    schedule` and `--threshold 0.9` are the registry's own defaults, and still win (flags, YAML, model_args)."""
    from d1.cli.args import parse_config
    from d1.evaluation.harness import check_options

    family = {k: v for k, v in _family(block_family_dir).sampler_defaults.items() if k in ("unmask", "threshold")}
    expected = {**family, **dict(zip([g.lstrip("-") for g in given[::2]], given[1::2], strict=True))}
    expected["threshold"] = float(expected["threshold"])
    argv = _eval_argv(block_family_dir, tmp_path / "x.csv", tmp_path)[1:] + given
    yaml = tmp_path / "eval.yaml"
    yaml.write_text("".join(f"{k}: {v}\n" for k, v in zip(given[::2], given[1::2], strict=True)).replace("--", ""))
    model_args = {"pretrained": str(block_family_dir), **{k.lstrip("-"): v for k, v in zip(given[::2], given[1::2], strict=True)}}
    for config in (
        parse_config(EvalConfig, argv),
        parse_config(EvalConfig, [*argv[: -len(given) or None], "--config", str(yaml)]),
        check_options(model_args)[1],
    ):
        options = config.options()
        assert {"unmask": options.unmask, "threshold": options.threshold} == expected
