"""`d1 demo`: the paper's Table 1 at tiny scale on a laptop CPU, in resumable stages.

base (generic masked-diffusion pre-training) -> +SFT, +diffu-GRPO (from base), d1 (SFT then diffu-GRPO); each
row evaluated with `d1 eval` at several generation lengths and scored with `d1 score`'s code, then reported.
A stage that finished leaves `stages/<name>.json`; a run started again skips it, and a stage interrupted
mid-training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d1.demo.config import FIRST_STAGE, ROWS, STAGES, DemoConfig
from d1.demo.data import DemoData, make_demo_data
from d1.demo.report import write_report
from d1.utils import check_writable, say, write_atomic, write_json_atomic

if TYPE_CHECKING:
    from d1.rl.config import DiffuGRPOConfig
    from d1.sft.config import SFTConfig

MIN_FREE_BYTES = 500 * 2**20
ROW_STAGES = {"base": "pretrain", "sft": "sft", "rl_base": "rl_base", "d1": "d1"}
"""The stage that trains each row's model."""


@dataclass
class Stage:
    name: str
    what: str
    seconds_estimate: Callable[[DemoConfig], float]
    run: Callable[[DemoConfig, DemoData], dict[str, Any]]


def _models(config: DemoConfig) -> Path:
    return Path(config.output_dir) / "models"


def _train_options(config: DemoConfig) -> dict[str, Any]:
    """Shared by both trainers: all weights trained in float32, no reporting, resumable, 2 checkpoints kept."""
    return {
        "dtype": "float32",
        "lora": False,
        "report_to": "none",
        "seed": config.seed,
        "resume_from_checkpoint": "auto",
        "save_total_limit": 2,
        "logging_steps": 5,
    }


def sft_config(config: DemoConfig, model: Path, data: Path, job: str, steps: int, preset: str) -> SFTConfig:
    """The `SFTConfig` of pre-training (`text` preset) or SFT (`generic`) from `model` into models/`job`."""
    from d1.sft.config import SFTConfig

    return SFTConfig(
        model_path=str(model),
        train_data=str(data),
        preset=preset,
        output_dir=str(_models(config)),
        job_name=job,
        max_length=config.max_length,
        block_length=config.block_length if config.block_diffusion else None,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=config.learning_rate,
        eval_fraction=0.0,
        save_steps=max(steps // 3, 1),
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=min(20, steps // 10),
        debugging=True,
        **_train_options(config),
    )


def _sft(config: DemoConfig, model: Path, data: Path, job: str, steps: int, preset: str) -> dict[str, Any]:
    from d1.sft.run import run_sft

    trainer = run_sft(sft_config(config, model, data, job, steps, preset))
    return {"model": str(_models(config) / job), "log_history": trainer.state.log_history}


def grpo_options(config: DemoConfig, data: DemoData, start: Path, job: str) -> dict[str, Any]:
    """An RL stage's `DiffuGRPOConfig` fields: the demo's knobs, from model `start` into models/`job` (`rl_base`:
    RL from the base model, with IGPO's hints when `rl_base_hints`)."""
    batch = config.rl_prompts_per_step * config.num_generations
    steps = config.rl_base_steps if job == "rl_base" else config.rl_steps
    every = max(steps // 4, config.num_iterations)
    # IGPO's free tail of 30 of 256 tokens and chunks of 5-10 do not fit a 28-token answer (rl-at-tiny-scale.md)
    hints = {"zero_signal_groups": "inpaint", "inpaint_free_tail": 2, "inpaint_chunk_size": [2, 4]}
    return {
        "model_path": str(start),
        "output_dir": str(_models(config) / job),
        "dataset": "sudoku",
        "data_path": str(data.rl),
        "validation_path": str(data.validation),
        "train_holdout": 0,
        "system_prompt": "",
        "num_generations": config.num_generations,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "generation_batch_size": batch,
        "num_iterations": config.num_iterations,
        "max_prompt_length": 128,
        "gen_length": config.rl_gen_length,
        "block_length": config.block_length,
        "diffusion_steps": config.rl_diffusion_steps,
        "temperature": config.temperature,
        "learning_rate": config.rl_learning_rate,
        "beta": 0.0,
        "logp_estimator": config.logp_estimator,
        "reward_funcs": list(config.reward_funcs),
        "negative_advantage_scale": config.negative_advantage_scale,
        "rollout_sampler": config.rollout_sampler,
        "max_steps": steps,
        "eval_steps": every,
        "save_steps": every,
        "log_completions": False,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        **_train_options(config),
        **(hints if job == "rl_base" and config.rl_base_hints else {}),
    }


def grpo_config(config: DemoConfig, data: DemoData, start: Path, job: str) -> DiffuGRPOConfig:
    """The `DiffuGRPOConfig` of an RL stage."""
    from d1.rl.config import DiffuGRPOConfig

    return DiffuGRPOConfig(**grpo_options(config, data, start, job))


def grpo_argv(config: DemoConfig, data: DemoData, start: Path, job: str) -> list[str]:
    """An RL stage's settings as `d1 grpo` flags (a list's items after its flag, booleans as true/false), for
    benchmarks/rl_methods.py, which appends its own flags after them."""
    argv = []
    for key, value in grpo_options(config, data, start, job).items():
        if value is None:  # the option's own default (a block-diffusion family's rollout_sampler)
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def check_grpo_settings(config: DemoConfig, data: DemoData) -> None:
    """`d1 grpo`'s own checks of the RL stages' settings (estimator against the family's attention, sampler,
    rewards, batch...), run before any stage so that a bad value fails in seconds, not after pre-training and SFT."""
    from d1.models.families import family
    from d1.rl.run import resolve_rewards
    from d1.tasks import get_task

    model_config = family(config.family).config_class()
    for start, job in (("base", "rl_base"), ("sft", "d1")):
        grpo = grpo_config(config, data, _models(config) / start, job)
        grpo.validate(world_size=1, model_config=model_config)
        resolve_rewards(get_task(grpo.dataset), grpo.reward_funcs, grpo.reward_weights)


def _grpo(config: DemoConfig, data: DemoData, start: Path, job: str) -> dict[str, Any]:
    from d1.rl.run import run_grpo

    out = _models(config) / job
    trainer = run_grpo(grpo_config(config, data, start, job))
    best_file = out / "best_checkpoint.json"
    best = json.loads(best_file.read_text()) if best_file.exists() else None
    model = best["checkpoint"] if best and Path(best["checkpoint"]).is_dir() else str(out)
    return {"model": model, "best": best, "log_history": trainer.state.log_history}


def test_scores(
    config: DemoConfig, test_path: Path, model: str, name: str, out: Path, save_traces: int = 0
) -> dict[int, dict[str, float]]:
    """`d1 eval` + `d1 score` of one model on the test puzzles at each of `eval_gen_lengths`:
    {length: {"accuracy": cells %, "solved": puzzles %, ...}} (also used by benchmarks/rl_methods.py)."""
    from d1.evaluation.config import EvalConfig
    from d1.evaluation.runner import run_eval
    from d1.evaluation.score import score_paths, scores_to_json

    for length in config.eval_gen_lengths:
        run_eval(
            EvalConfig(
                model_path=model,
                dataset="sudoku",
                data_path=str(test_path),
                gen_length=length,
                block_length=config.block_length,
                diffusion_steps=length // 2,
                batch_size=config.eval_batch_size,
                subsample=-1,
                output_dir=str(out),
                model_label=name,
                system_prompt="",
                seed=config.seed,
                dtype="float32",
                save_traces=save_traces,
            )
        )
    scores = score_paths([out])
    as_json = scores_to_json(scores)
    results = {}
    for length in config.eval_gen_lengths:
        setup = f"sudoku_{name}_{length}_{length // 2}"
        solved = [item.correct for item in scores[setup].items]
        results[length] = {**as_json[setup], "solved": 100 * sum(solved) / len(solved)}
    return results


def _evaluate(config: DemoConfig, data: DemoData, models: dict[str, str]) -> dict[str, Any]:
    out = Path(config.output_dir) / "eval"
    # save_traces: the report replays the first test puzzle's denoising
    return {
        "scores": {row: test_scores(config, data.test, models[row], row, out, save_traces=1) for row in ROWS}
    }


def _stages(config: DemoConfig, done: dict[str, dict[str, Any]]) -> list[Stage]:
    """The stages in order (`STAGES`); evaluation reads the models the finished stages recorded in `done`."""

    def base_model(config: DemoConfig) -> Path:
        return _models(config) / "base"

    def run_init(config: DemoConfig, data: DemoData) -> dict[str, Any]:
        from d1.models.presets import init_model

        return {"model": str(init_model(config.preset, _models(config) / "init", config.seed, config.family))}

    return [
        Stage(
            "init", "a fresh random model of the family (--family) and its tokenizer", lambda c: 2, run_init
        ),
        Stage(
            "pretrain",
            "generic masked-diffusion pre-training on mixed synthetic text -> base",
            lambda c: 0.6 * c.pretrain_steps,
            lambda c, d: _sft(c, _models(c) / "init", d.pretrain, "base", c.pretrain_steps, "text"),
        ),
        Stage(
            "sft",
            "masked SFT on Sudoku answers in d1's format (--trace) -> +SFT",
            lambda c: 0.6 * c.sft_steps,
            lambda c, d: _sft(c, base_model(c), d.sft, "sft", c.sft_steps, "generic"),
        ),
        Stage(
            "rl_base",
            "diffu-GRPO from the base model -> +diffu-GRPO",
            lambda c: (2.1 if c.rl_base_hints else 0.65) * c.rl_base_steps,
            lambda c, d: _grpo(c, d, base_model(c), "rl_base"),
        ),
        Stage(
            "d1",
            "diffu-GRPO from the SFT model -> d1",
            lambda c: 1.45 * c.rl_steps,
            lambda c, d: _grpo(c, d, _models(c) / "sft", "d1"),
        ),
        Stage(
            "eval",
            f"d1 eval of the 4 rows at gen_length {config.eval_gen_lengths} on {config.n_test} test puzzles",
            lambda c: 0.06 * c.n_test * len(c.eval_gen_lengths) * len(ROWS),
            lambda c, d: _evaluate(c, d, {row: done[stage]["model"] for row, stage in ROW_STAGES.items()}),
        ),
    ]


def _chat_renderer(family_name: str) -> Callable[[str, str], str]:
    """Renders an SFT trace in the family's chat format."""
    from d1.models.presets import build_tokenizer

    tokenizer = build_tokenizer(family_name)

    def render(question: str, answer: str) -> str:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=False).removeprefix(tokenizer.bos_token)

    return render


def preflight(config: DemoConfig) -> None:
    """Fail before any training on an unwritable output folder or a nearly full disk."""
    check_writable(config.output_dir, "output_dir")
    probe = Path(config.output_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise OSError(
            f"output_dir={config.output_dir!r}: only {free / 2**20:.0f} MiB free on its disk; the demo needs about "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB. Free some space or choose another --output_dir."
        )


def check_same_settings(config: DemoConfig, out: Path) -> None:
    """Refuse to continue a run with a setting changed that a finished stage read (`FIRST_STAGE`): that stage
    would be reused as it is, and the report would credit it to the new value."""
    saved_path = out / "config.json"
    finished = {p.stem for p in (out / "stages").glob("*.json")}
    if not finished or not saved_path.exists():
        return
    saved, now = json.loads(saved_path.read_text()), json.loads(json.dumps(asdict(config)))
    changed = []
    for key, value in now.items():
        first = FIRST_STAGE.get(key, "init")
        if key in saved and saved[key] != value and first and finished & set(STAGES[STAGES.index(first) :]):
            changed.append(f"{key}: {saved[key]!r} -> {value!r}")
    if changed:
        raise ValueError(
            f"output_dir={str(out)!r} holds a demo run whose finished stages read other settings "
            f"({'; '.join(changed)}). Run again with its settings to continue, or give another --output_dir."
        )


def run_demo(config: DemoConfig) -> Path:
    """Run (or resume) every stage up to `stop_after`, then write the report; returns the report's path (the
    output folder when stopped early)."""
    preflight(config)
    out = Path(config.output_dir)
    marks = out / "stages"
    check_same_settings(config, out)
    marks.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", asdict(config))
    started = time.perf_counter()
    data = make_demo_data(
        out / "data",
        config.seed,
        config.n_sft,
        config.n_rl,
        config.n_validation,
        config.n_test,
        _chat_renderer(config.family),
        config.trace,
        config.rl_empty_cells,
    )
    check_grpo_settings(config, data)
    done: dict[str, dict[str, Any]] = {}
    stages = _stages(config, done)
    for index, stage in enumerate(stages, 1):
        mark = marks / f"{stage.name}.json"
        if mark.exists():
            done[stage.name] = json.loads(mark.read_text())
            say(
                f"[{index}/{len(stages)}] {stage.name}: already done ({done[stage.name]['seconds']:.0f} s), skipped"
            )
        else:
            say(
                f"[{index}/{len(stages)}] {stage.name}: {stage.what} (~{stage.seconds_estimate(config):.0f} s)"
            )
            began = time.perf_counter()
            result = stage.run(config, data)
            result["seconds"] = time.perf_counter() - began
            write_atomic(mark, json.dumps(result, indent=1, default=str))  # a rerun reads it
            done[stage.name] = result
        if stage.name == config.stop_after != "eval":
            say(f"stopped after {stage.name} (--stop_after); run again without it to continue")
            return out
    report = write_report(config, done, time.perf_counter() - started)
    return report
