"""One sampler interface: every registered sampler's options reach `d1 eval`, `d1 chat`, `d1 grpo` and `d1 harness`
with the same name and default (or a documented difference), old spellings still parse, and the README's commands
parse with today's parsers."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from d1.cli.args import parse_config
from d1.cli.chat import ChatConfig
from d1.diffusion.samplers import SAMPLERS, build_options, option_fields
from d1.evaluation.config import EvalConfig
from d1.evaluation.harness import SAMPLER_OPTIONS, resolve_options
from d1.rl.config import DiffuGRPOConfig
from d1.sft.config import SFTConfig

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"eval": EvalConfig, "chat": ChatConfig, "grpo": DiffuGRPOConfig}

DOCUMENTED_DIFFERENCES = {
    ("grpo", "gen_length"): (256, "d1 grpo: 256"),
    ("grpo", "diffusion_steps"): (128, "d1 grpo: 128"),
    ("grpo", "temperature"): (0.9, "d1 grpo: 0.9"),
    ("chat", "early_stop"): (True, "On in chat"),
}
"""(command, option): the command's default and the words of its help that say so."""

VALUES = {
    "gen_length": (64, {}), "diffusion_steps": (16, {}), "temperature": (0.5, {}), "block_length": (16, {}),
    "cache": ("dual", {}), "unmask": ("threshold", {}), "threshold": (0.5, {}), "remasking": ("random", {}),
    "cfg_scale": (0.5, {}), "factor": (0.8, {}), "max_block_steps": (2, {"unmask": "threshold"}),
    "early_stop": (True, {}), "logits_eos_inf": (True, {}), "confidence_eos_eot_inf": (True, {}),
    "alg": ("maskgit_plus", {}), "alg_temp": (0.1, {}), "top_p": (0.9, {}), "top_k": (5, {}), "eps": (1e-4, {}),
}  # fmt: skip
"""A valid non-default value of each option, with the options it needs beside it."""


def _cases() -> list[tuple[str, str]]:
    return [(sampler.name, spec.name) for sampler in SAMPLERS.values() for spec in dataclasses.fields(sampler.options)]


def test_every_option_has_a_test_value_and_help() -> None:
    assert set(VALUES) == set(option_fields()), "a new sampler option needs a test value here"
    for name, (_, spec) in option_fields().items():
        assert spec.metadata.get("help"), f"sampler option {name} has no help text"


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("sampler", "name"), _cases())
def test_each_option_reaches_each_command(command: str, sampler: str, name: str) -> None:
    cls = COMMANDS[command]
    value, companions = VALUES[name]
    argv = ["--sampler", sampler, f"--{name}", str(value)]
    for other, other_value in companions.items():
        argv += [f"--{other}", str(other_value)]
    config = parse_config(cls, argv)
    assert getattr(config, name) == value
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    registry_default = option_fields()[name][1].default
    if (command, name) in DOCUMENTED_DIFFERENCES:
        default, words = DOCUMENTED_DIFFERENCES[(command, name)]
        assert defaults[name] == default
        help_text = next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)
        assert words in help_text
    else:
        assert defaults[name] == registry_default, f"d1 {command} --{name} defaults differently, undocumented"
    values = {n: getattr(config, n) for n in option_fields()}
    options = build_options(sampler, values, defaults)
    assert getattr(options, name) == value


@pytest.mark.parametrize(("sampler", "name"), _cases())
def test_each_option_reaches_the_harness(sampler: str, name: str) -> None:
    value, companions = VALUES[name]
    args = {"pretrained": "m", "sampler": sampler, name: str(value), **{k: str(v) for k, v in companions.items()}}
    options = resolve_options(args)
    assert options[name] == value and SAMPLER_OPTIONS[name] == option_fields()[name][1].default
    values = {n: options[n] for n in option_fields()}
    assert getattr(build_options(sampler, values), name) == value


def test_a_sampler_refuses_options_only_another_reads() -> None:
    with pytest.raises(ValueError, match=r"alg='maskgit_plus': option\(s\) of sampler\(s\) \['dream', 'fastdllm_dream'\]"):
        parse_config(EvalConfig, ["--sampler", "llada", "--alg", "maskgit_plus"]).options()
    with pytest.raises(ValueError, match=r"cache='dual': option\(s\) of sampler\(s\) \['fastdllm_dream', 'llada'\]"):
        parse_config(EvalConfig, ["--sampler", "dream", "--cache", "dual"]).options()
    # chat's own default (early_stop on) is not an option the user set: Dream's sampler accepts the chat default
    chat = parse_config(ChatConfig, ["--sampler", "dream"])
    assert build_options("dream", {n: getattr(chat, n) for n in option_fields()},
                         {f.name: f.default for f in dataclasses.fields(ChatConfig)}).name == "dream"  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "argv", "expected"),
    [
        (EvalConfig, ["--steps", "8"], {"diffusion_steps": 8}),
        (EvalConfig, ["--model_name", "tiny"], {"model_label": "tiny"}),
        (EvalConfig, ["--cache", "none"], {"cache": "none"}),
        (ChatConfig, ["--steps", "8", "--no-live", "--no_early_stop"], {"diffusion_steps": 8, "live": False, "early_stop": False}),
        (DiffuGRPOConfig, ["--max_completion_length", "64", "--rollout_threshold", "0.5"], {"gen_length": 64, "threshold": 0.5}),
        (DiffuGRPOConfig, ["--steps", "32"], {"diffusion_steps": 32}),
        (SFTConfig, ["--model_name", "some/model"], {"model_path": "some/model"}),
    ],
)  # fmt: skip
def test_old_spellings_still_parse(cls: type, argv: list[str], expected: dict[str, object]) -> None:
    config = parse_config(cls, argv)
    assert {name: getattr(config, name) for name in expected} == expected


def test_old_spellings_in_yaml_configs(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("max_completion_length: 64\nblock_length: 32\ndiffusion_steps: 32\nrollout_sampler: parallel\n")
    config = parse_config(DiffuGRPOConfig, ["--config", str(path)])
    options = config.rollout_options()
    assert (options.gen_length, options.cache, options.unmask, options.max_block_steps) == (64, "dual", "threshold", 16)
    assert resolve_options({"pretrained": "m", "steps": "8"})["diffusion_steps"] == 8


def test_rollout_sampler_shorthand_refuses_a_contradiction() -> None:
    config = parse_config(DiffuGRPOConfig, ["--rollout_sampler", "cached", "--cache", "prefix"])
    with pytest.raises(ValueError, match="rollout_sampler='cached' sets .* but cache='prefix' was given too"):
        config.rollout_options()


def _readme_commands() -> list[list[str]]:
    """Every `d1 <command> ...` of the README's code blocks (continuation lines joined), as argv."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            match = re.search(r"(?:^|-m )d1 (eval|chat|grpo|sft|harness) (.*)", line)
            if match:
                words = shlex.split(match.group(2))
                ends = [i for i, word in enumerate(words) if word in ("&&", "||", ";", "|", ">")]
                commands.append([match.group(1), *words[: ends[0] if ends else len(words)]])
    return commands


def test_readme_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _readme_commands()
    assert {argv[0] for argv in commands} >= {"eval", "chat", "grpo", "sft", "harness"}
    parsers = {"eval": EvalConfig, "chat": ChatConfig, "grpo": DiffuGRPOConfig, "sft": SFTConfig}
    from d1.cli.grpo import ALIASES as GRPO_CLI
    from d1.cli.harness import parse_args
    from d1.cli.sft import ALIASES as SFT_CLI

    cli_aliases = {"grpo": GRPO_CLI, "sft": SFT_CLI}
    monkeypatch.chdir(ROOT)  # the README's relative config paths
    for name, *argv in commands:
        if name == "harness":
            args = parse_args(argv)
            from lm_eval.utils import simple_parse_args_string

            resolve_options({"pretrained": args.model_path, **simple_parse_args_string(args.model_args)})
            continue
        parse_config(parsers[name], argv, cli_aliases.get(name))
