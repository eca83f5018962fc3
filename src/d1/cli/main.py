"""The `d1` command: one subcommand per job, each a thin module under `d1.cli` imported on demand."""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "demo": (
        "d1.cli.demo",
        "the embedded default: pre-train, SFT, diffu-GRPO and evaluate a tiny model on CPU",
    ),
    "sft": ("d1.cli.sft", "masked SFT (completion-only, LLaDA's algorithm)"),
    "grpo": ("d1.cli.grpo", "diffu-GRPO reinforcement learning with verifiable rewards"),
    "init-model": ("d1.cli.init_model", "write a tiny random LLaDA or Dream model + tokenizer for CPU runs"),
    "eval": ("d1.cli.eval", "generate answers for a task's test set (d1's eval.py files)"),
    "score": ("d1.cli.score", "d1's accuracy table of generation files"),
    "trace": ("d1.cli.trace", "write an HTML page replaying the traces of `d1 eval --save_traces N`"),
    "chat": ("d1.cli.chat", "chat with a model in the terminal, watching each answer being denoised"),
    "harness": ("d1.cli.harness", "lm-evaluation-harness tasks on a d1 model (the `d1` lm-eval model)"),
    "data": ("d1.cli.data", "write synthetic Sudoku/Countdown sets in d1's formats"),
    "merge": ("d1.cli.merge", "merge a LoRA adapter into its base model and save a model folder"),
    "launch-check": ("d1.cli.launch_check", "check that an accelerate config fits this machine"),
}


def usage() -> str:
    lines = [
        "usage: d1 <command> [options]   (d1 <command> --help for its options;",
        "       D1_TRACEBACK=1 shows full tracebacks)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"d1: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        code = module.main(rest) or 0
        from d1.utils import shutdown_distributed

        shutdown_distributed()
        return code
    except (ValueError, FileNotFoundError, PermissionError, OSError, RuntimeError) as err:
        if os.environ.get("D1_TRACEBACK"):
            raise
        print(f"d1 {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
