"""Parsing a dataclass config from `--config FILE.yaml` plus command-line flags (flags win), with d1's aliases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from transformers import HfArgumentParser

from d1.utils import mark_set_by_user, read_yaml_mapping

T = TypeVar("T")


def _rename(argv: Sequence[str], aliases: dict[str, str]) -> list[str]:
    out = []
    for token in argv:
        flag, sep, value = token.partition("=")
        out.append(aliases.get(flag, flag) + sep + value if flag.startswith("--") else token)
    return out


def parse_config(
    cls: type[T], argv: Sequence[str], aliases: dict[str, str] | None = None, prog: str | None = None
) -> T:
    """Build `cls` from YAML (`--config FILE`) overridden by flags; unknown keys are an error naming them.
    Older spellings (`cls.ALIASES`, then `aliases`) are renamed in both."""
    aliases = {**getattr(cls, "ALIASES", {}), **(aliases or {})}  # the config's own older spellings, then the CLI's
    parser = HfArgumentParser(cls, prog=prog)
    parser.add_argument("--config", type=str, default=None, help="YAML file of options; flags override it.")
    argv = _rename(argv, aliases)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {known.config!r}: no such file.")
        values = read_yaml_mapping(path, f"--config {known.config!r}")
        values = {aliases.get(f"--{k}", f"--{k}")[2:]: v for k, v in values.items()}
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(
                f"--config {known.config!r}: unknown option(s) {unknown}. See `--help` for the options."
            )
        parser.set_defaults(**values)
    (config,) = parser.parse_args_into_dataclasses(args=[a for a in argv], look_for_args_file=False)[:1]
    flags = {token.partition("=")[0] for token in argv if token.startswith("--")}
    given = {action.dest for action in parser._actions if flags & set(action.option_strings)}
    return mark_set_by_user(config, given | set(values if known.config else ()))
