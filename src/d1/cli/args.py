"""Parsing a dataclass config from `--config FILE.yaml` plus command-line flags (flags win), with d1's aliases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")


def _rename(argv: Sequence[str], aliases: dict[str, str]) -> list[str]:
    out = []
    for token in argv:
        flag, sep, value = token.partition("=")
        out.append(aliases.get(flag, flag) + sep + value if flag.startswith("--") else token)
    return out


def read_yaml_options(path: Path, shown: str) -> dict[str, Any]:
    """The option mapping of a YAML config; syntax errors and non-mapping files name the file (and line)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {shown!r} is not UTF-8 text ({err.reason}); save it as UTF-8.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ValueError(f"--config {shown!r} is not valid YAML{where}: {problem}. Fix the file.") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {shown!r} holds a {type(values).__name__}, not a mapping of options: write one "
            "`option: value` per line (e.g. `learning_rate: 1e-5`)."
        )
    return values


def parse_config(
    cls: type[T], argv: Sequence[str], aliases: dict[str, str] | None = None, prog: str | None = None
) -> T:
    """Build `cls` from YAML (`--config FILE`) overridden by flags; unknown keys are an error naming them."""
    aliases = aliases or {}
    parser = HfArgumentParser(cls, prog=prog)
    parser.add_argument("--config", type=str, default=None, help="YAML file of options; flags override it.")
    argv = _rename(argv, aliases)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {known.config!r}: no such file.")
        values = read_yaml_options(path, known.config)
        values = {aliases.get(f"--{k}", f"--{k}")[2:]: v for k, v in values.items()}
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(
                f"--config {known.config!r}: unknown option(s) {unknown}. See `--help` for the options."
            )
        parser.set_defaults(**values)
    (config,) = parser.parse_args_into_dataclasses(args=[a for a in argv], look_for_args_file=False)[:1]
    return config
