"""Every option of every command has help text: the dataclass configs' fields (`d1 demo`, `d1 sft`) and the
argparse commands' arguments."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import fields

import pytest

from d1.cli.chat import ChatConfig
from d1.cli.main import COMMANDS
from d1.demo.config import DemoConfig
from d1.evaluation.config import EvalConfig
from d1.rl.config import DiffuGRPOConfig
from d1.sft.config import SFTConfig


@pytest.mark.parametrize("config", [DemoConfig, SFTConfig, DiffuGRPOConfig, EvalConfig, ChatConfig])
def test_every_config_field_has_help(config: type) -> None:
    assert [f.name for f in fields(config) if f.init and not f.metadata.get("help")] == []


class Parsed(Exception):
    """Raised in place of parsing, carrying the parser a command built."""


def parser_of(command: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(COMMANDS[command][0]).main([])
    return parsed.value.args[0]


def arguments_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """The arguments of `parser` and of its subcommands whose help text is empty."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                missing += arguments_without_help(sub)
        elif not action.help:
            missing.append(f"{parser.prog} {action.option_strings or action.dest}")
    return missing


@pytest.mark.parametrize("command", ["init-model", "data", "merge", "score", "launch-check", "trace", "harness"])
def test_every_argument_has_help(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert arguments_without_help(parser_of(command, monkeypatch)) == []


def test_a_missing_help_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(prog="d1 x")
    sub = parser.add_subparsers().add_parser("make", prog="d1 x make")
    sub.add_argument("--seed")
    assert arguments_without_help(parser) == ["d1 x make ['--seed']"]
