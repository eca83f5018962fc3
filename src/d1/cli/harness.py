"""`d1 harness --model_path M --tasks gsm8k,...`: lm-evaluation-harness tasks on a d1 model (the `d1` lm-eval model
of `d1.evaluation.harness`). Flags mean what lm-eval's own flags mean; `--model_args k=v,...` passes the sampler
and likelihood options. Prints lm-eval's table and writes the results, with their protocol card, to
`--output_path`/results_<time>.json. Task names, task output types and model options are checked before any
model loads."""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import time
from pathlib import Path
from typing import Any

from d1.utils import check_writable, say, without_stderr


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="d1 harness", description=__doc__)
    parser.add_argument("--model_path", required=True, help="Base model: Hub name or local folder.")
    parser.add_argument("--tasks", required=True, help="Comma-separated lm-eval task, group or tag names.")
    parser.add_argument(
        "--model_args",
        default="",
        help="k=v,... options of the d1 model: checkpoint_path, dtype, gen_length, block_length, steps, "
        "remasking, cfg_scale, temperature, cache, unmask, threshold, early_stop, mc_num, is_greedy, ...",
    )
    parser.add_argument("--include_path", default=None, help="Folder of extra task YAMLs (local tasks).")
    parser.add_argument("--limit", type=float, default=None, help="Items per task (a fraction if < 1).")
    parser.add_argument("--num_fewshot", type=int, default=None, help="Few-shot examples (task default if unset).")
    parser.add_argument("--output_path", default=None, help="Folder for the results JSON (none: not written).")
    parser.add_argument(
        "--apply_chat_template", action="store_true", help="Format prompts with the tokenizer's chat template."
    )
    parser.add_argument(
        "--fewshot_as_multiturn", action="store_true", help="With the chat template: one turn per shot."
    )
    parser.add_argument("--batch_size", type=int, default=1, help="Prompts (or ELBO samples) per forward pass.")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu...; default cuda if available.")
    parser.add_argument(
        "--seed", type=int, default=1234, help="lm-eval's seeds (python, numpy, torch, few-shot) and the model's."
    )
    parser.add_argument("--log_samples", action="store_true", help="Keep every item's prompt and answer.")
    return parser.parse_args(argv)


def task_names(tasks: str) -> list[str]:
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--tasks {tasks!r} names no task.")
    return names


LM_EVAL_TASKS = str(Path(__file__).resolve().parents[1] / "evaluation" / "lm_eval_tasks")
"""d1's own lm-eval tasks (d1_humaneval, d1_humaneval_instruct, d1_mbpp: tests run in d1.sandbox)."""


@functools.cache
def task_manager(include_path: str | None) -> Any:
    """lm-eval's index of task YAMLs (its own and `include_path`'s), built once per process (it reads
    thousands of files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[LM_EVAL_TASKS, *([include_path] if include_path else [])])


def check_tasks(manager: Any, names: list[str]) -> None:
    """Unknown names (with close matches) and tasks whose output type the d1 model refuses."""
    from d1.evaluation.harness import REFUSED_OUTPUT_TYPES

    known = manager.all_tasks
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(
                f"--tasks: {name!r} is not an lm-eval task, group or tag.{hint} `lm-eval ls tasks` lists them; "
                "local YAMLs need --include_path."
            )
        for task, output_type in output_types(manager, name).items():
            if output_type in REFUSED_OUTPUT_TYPES:
                raise ValueError(
                    f"--tasks: {task!r} (in {name!r}) asks for {output_type}, which the d1 model refuses: "
                    f"{REFUSED_OUTPUT_TYPES[output_type]}. Choose generate_until or multiple-choice tasks."
                )


def output_types(manager: Any, name: str, seen: set[str] | None = None) -> dict[str, str]:
    """`{task: output_type}` for a task, or every task of a group or tag, read from the YAML index (no data)."""
    seen = seen if seen is not None else set()
    if name in seen:
        return {}
    seen.add(name)
    entry = manager.task_index.get(name)
    if entry is None:
        return {}
    cfg = entry.cfg or {}
    if entry.kind.name in ("TASK", "PY_TASK"):
        return {name: cfg.get("output_type", "generate_until")}  # lm-eval's default output type
    members = cfg.get("task") if isinstance(cfg.get("task"), list) else []
    if entry.kind.name == "TAG":
        members = [task for task, other in manager.task_index.items() if name in (other.tags or set())]
    found: dict[str, str] = {}
    for member in members:
        if isinstance(member, str):
            found.update(output_types(manager, member, seen))
        elif isinstance(member, dict) and isinstance(member.get("task"), str):
            found[member["task"]] = member.get("output_type", "generate_until")
    return found


def harness_card(lm: Any, args: argparse.Namespace, names: list[str], results: dict[str, Any]) -> dict[str, Any]:
    """The protocol card of an lm-eval run: the task configs' versions and shots, the model's settings."""
    from d1.evaluation.protocol import card_fields

    settings = {
        **lm.settings(),
        "tasks": names,
        "task_versions": results.get("versions", {}),
        "n_shot": results.get("n-shot", {}),
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "apply_chat_template": args.apply_chat_template,
        "fewshot_as_multiturn": args.fewshot_as_multiturn,
        "seed": args.seed,
        "include_path": args.include_path,
    }
    source = f"lm-evaluation-harness task configs ({', '.join(names)})"
    card = card_fields("lm-eval", source, lm.options["model_path"], lm.options["checkpoint_path"])
    return json.loads(json.dumps({**settings, **card}, default=str))


def run_lm_eval(lm: Any, args: argparse.Namespace, names: list[str], manager: Any) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` of `names` on the d1 model with lm-eval's own flags, seeded by `--seed`."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        task_manager=manager,
        apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        log_samples=args.log_samples,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    names = task_names(args.tasks)
    if args.output_path:
        check_writable(args.output_path, "output_path")
    if args.include_path and not Path(args.include_path).is_dir():
        raise FileNotFoundError(f"--include_path {args.include_path!r} is not a folder.")
    import lm_eval.evaluator
    from lm_eval.utils import handle_non_serializable, make_table, simple_parse_args_string

    from d1.evaluation.harness import D1HarnessLM, check_options

    model_args = {"seed": args.seed, **simple_parse_args_string(args.model_args)}
    model_args.update(pretrained=args.model_path, batch_size=args.batch_size, device=args.device)
    check_options(model_args)
    manager = task_manager(args.include_path)
    check_tasks(manager, names)
    lm = D1HarnessLM(**model_args)
    # lm-eval runs git for a commit hash; outside a repository git prints "fatal: not a git repository"
    git_commit_hash = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = without_stderr(git_commit_hash)
    try:
        results = run_lm_eval(lm, args, names, manager)
    finally:
        lm_eval.evaluator.get_git_commit_hash = git_commit_hash
    results["protocol_card"] = harness_card(lm, args, names, results)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output_path:
        path = Path(args.output_path) / f"results_{time.strftime('%Y-%m-%dT%H-%M-%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=handle_non_serializable), encoding="utf-8")
        say(f"results in {path}")
    return 0
