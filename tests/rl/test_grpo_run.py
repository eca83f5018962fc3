"""`d1 grpo` end to end on the tiny model: it trains and logs every metric, resumes exactly between inner
updates, keeps prompt masks consistent, fails early on bad input, and runs under a 2-process launcher."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import d1.evaluation.generation
import d1.rl.trainer
from d1.cli.args import parse_config
from d1.cli.grpo import ALIASES
from d1.rl.config import DiffuGRPOConfig
from d1.rl.run import resolve_rewards, run_grpo
from d1.tasks import register_task, unregister_task
from d1.tasks.base import completion_texts
from d1.tasks.sudoku import SudokuTask
from d1.tasks.synthetic import make_dataset
from tests.conftest import run_on_two_cpu_processes
from tests.scale.grpo_probe import text_reward


def grpo_argv(model_dir, out, *extra: str) -> list[str]:
    return [
        "--model_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--dataset",
        "sudoku",
        "--synthetic_train_size",
        "64",
        "--system_prompt",
        "",
        "--no-lora",
        "--dtype",
        "float32",
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--generation_batch_size",
        "4",
        "--num_iterations",
        "2",
        "--max_prompt_length",
        "96",
        "--max_completion_length",
        "16",
        "--block_length",
        "8",
        "--diffusion_steps",
        "4",
        "--temperature",
        "1.0",
        "--learning_rate",
        "1e-3",
        "--beta",
        "0.04",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "100",
        "--report_to",
        "none",
        "--log_completions",
        "false",
        "--disable_tqdm",
        "true",
        "--seed",
        "5",
        *extra,
    ]


def config_of(*argv: str) -> DiffuGRPOConfig:
    return parse_config(DiffuGRPOConfig, list(argv), ALIASES)


METRICS = [
    "loss",
    "reward",
    "rewards/sudoku_reward_func",
    "rewards/sudoku_solved_reward_func",
    "reward_std",
    "zero_std_ratio",
    "completion_length",
    "kl",
    "clip_ratio",
    "learning_rate",
    "time/rollout",
    "time/old_logps",
    "time/update",
    "rollout/forward_passes",
    "rollout/tokens_per_pass",
]


def test_grpo_trains_and_logs_every_metric(family_model_dir, tmp_path) -> None:
    before = load_file(family_model_dir / "model.safetensors")
    trainer = run_grpo(
        config_of(*grpo_argv(family_model_dir, tmp_path, "--validation_size", "4", "--eval_steps", "2"))
    )
    logs = trainer.state.log_history
    rollout_logs = [h for h in logs if "reward" in h]
    assert len(rollout_logs) == 2  # one rollout every num_iterations=2 steps
    assert all(key in rollout_logs[0] for key in METRICS), sorted(rollout_logs[0])
    # the exact sampler: diffusion_steps=4 passes for 16 tokens
    assert [(h["rollout/forward_passes"], h["rollout/tokens_per_pass"]) for h in rollout_logs] == [(4, 4)] * 2
    assert all("kl" in h and "clip_ratio" in h for h in logs if "loss" in h)
    evals = [h for h in logs if "eval_accuracy" in h]
    assert [h["step"] for h in evals] == [0, 2, 4]  # the starting model too; the last step once
    best = json.loads((tmp_path / "best_checkpoint.json").read_text())
    assert best["step"] in (0, 2, 4)
    assert Path(best["checkpoint"]).is_dir()  # checkpoint-N, or the starting model when nothing beat it
    after = load_file(tmp_path / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_lora_reference_is_the_base_with_adapter_disabled(family_model_dir, tmp_path) -> None:
    argv = [a for a in grpo_argv(family_model_dir, tmp_path, "--max_steps", "2") if a != "--no-lora"]
    trainer = run_grpo(config_of(*argv, "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"))
    assert trainer.ref_model is None
    assert (tmp_path / "adapter_model.safetensors").exists()
    first = trainer.state.log_history[0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # the adapter starts at zero: policy == reference


def test_masks_shared_by_old_current_and_reference(tiny_model_dir, tmp_path) -> None:
    from d1.rl.trainer import DiffuGRPOTrainer

    seen: list[torch.Tensor] = []
    original = DiffuGRPOTrainer._logps

    def recording(self, model, batch, iteration):
        generator = self._generator(
            batch["input_ids"].device,
            *self._mask_seed_parts(batch["rollout_step"], batch["micro"], iteration),
        )
        seen.append((iteration, torch.rand(batch["input_ids"].shape, generator=generator)))
        return original(self, model, batch, iteration)

    DiffuGRPOTrainer._logps = recording
    try:
        run_grpo(
            config_of(
                *grpo_argv(tiny_model_dir, tmp_path, "--max_steps", "2", "--gradient_accumulation_steps", "1")
            )
        )
    finally:
        DiffuGRPOTrainer._logps = original
    # rollout: old(it0), old(it1), ref(it0), ref(it1); then updates: current(it0), current(it1)
    by_iteration: dict[int, list[torch.Tensor]] = {}
    for iteration, draw in seen:
        by_iteration.setdefault(iteration, []).append(draw)
    assert all(len(v) == 3 for v in by_iteration.values())
    assert all(torch.equal(v[0], w) for v in by_iteration.values() for w in v)
    assert not torch.equal(by_iteration[0][0], by_iteration[1][0])  # random_masking: iterations differ


def test_fixed_masking_reuses_one_mask(tiny_model_dir, tmp_path) -> None:
    config = config_of(*grpo_argv(tiny_model_dir, tmp_path, "--random_masking", "false"))
    from d1.rl.trainer import DiffuGRPOTrainer

    parts = DiffuGRPOTrainer._mask_seed_parts
    holder = type("T", (), {"args": config, "accelerator": type("A", (), {"process_index": 0})()})()
    assert parts(holder, 0, 0, 0) == parts(holder, 4, 1, 3)
    config.random_masking = True
    assert parts(holder, 0, 0, 0) != parts(holder, 0, 0, 1)


def test_resume_between_inner_updates_matches_uninterrupted(tiny_model_dir, tmp_path) -> None:
    extra = ("--save_steps", "1", "--beta", "0.0")
    run_grpo(config_of(*grpo_argv(tiny_model_dir, tmp_path / "a", *extra)))
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")  # 3 % 2: mid-rollout
    trainer = run_grpo(
        config_of(*grpo_argv(tiny_model_dir, tmp_path / "b", *extra), "--resume_from_checkpoint", "auto")
    )
    assert trainer.state.global_step == 4
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (
            ["--num_generations", "3"],
            ValueError,
            r"num_generations=3 does not divide.*Values that work: \[2, 4\]",
        ),
        (["--dataset", "chess"], ValueError, "unknown task 'chess'"),
        (["--reward_funcs", "xmlcount_reward_func"], ValueError, "sudoku_reward_func"),
        (
            ["--max_completion_length", "20"],
            ValueError,
            "gen_length=20 must be a multiple of block_length=8",
        ),
        (["--reward_weights", "1.0", "2.0", "3.0"], ValueError, "reward_weights has 3 values"),
        (
            ["--negative_advantage_scale", "-1"],
            ValueError,
            r"negative_advantage_scale=-1.0 is outside \[0, 1\]",
        ),
        (["--logp_estimator", "exact"], ValueError, "logp_estimator='exact' is unknown"),
        (["--objective", "ppo"], ValueError, "objective='ppo' is unknown; use one of .'grpo_clip'"),
        (["--objective", "wd1", "--beta", "0", "--epsilon", "0.2"], ValueError, "epsilon=0.2 would be ignored"),
        (["--objective", "wd1"], ValueError, "beta=0.04 with objective='wd1'.*set --beta 0"),
        (["--objective", "spg", "--beta", "0"], ValueError, "defined on ELBO estimates; set logp_estimator=mc_elbo"),
        (["--logp_estimator", "mc_elbo", "--mc_samples", "0"], ValueError, "mc_samples=0 must be >= 1"),
        (["--mc_samples", "4"], ValueError, "mc_samples=4 would be ignored"),
        (["--epsilon_high", "0.3"], ValueError, "only objective=espo clips asymmetrically"),
        (["--rollout_order", "left_to_right"], ValueError, "Set both to left_to_right"),
        (["--inpaint_max_replacements", "1"], ValueError, r"inpaint_max_replacements=1.* would be ignored"),
        (
            ["--zero_signal_groups", "inpaint", "--inpaint_max_replacements", "2"],
            ValueError,
            r"inpaint_max_replacements=2 must be in \[1, num_generations=2\)",
        ),
        (
            ["--zero_signal_groups", "inpaint", "--dataset", "countdown", "--inpaint_max_replacements", "1",
             "--inpaint_free_tail", "0"],
            ValueError,
            "which task .countdown. does not",
        ),
    ],
)
def test_bad_input_fails_before_the_model_loads(tiny_model_dir, tmp_path, extra, error, message) -> None:
    with pytest.raises(error, match=message):
        run_grpo(config_of(*grpo_argv(tiny_model_dir, tmp_path / "out", *extra)))
    assert not (tmp_path / "out").exists()


def test_wd1_and_spg_make_no_old_log_prob_pass(tiny_model_dir, tmp_path, monkeypatch) -> None:
    passes: list[str] = []
    real = d1.rl.trainer.per_token_logps
    terms = d1.rl.trainer.elbo_terms

    def counted(real_function):
        def call(*args, **kwargs):
            passes.append("update" if torch.is_grad_enabled() else "rollout")
            return real_function(*args, **kwargs)

        return call

    monkeypatch.setattr(d1.rl.trainer, "per_token_logps", counted(real))
    monkeypatch.setattr(d1.rl.trainer, "elbo_terms", counted(terms))
    objectives = {"grpo_clip": [], "wd1": [], "spg": ["--logp_estimator", "mc_elbo"]}
    counts = {}
    for objective, extra in objectives.items():
        passes.clear()
        argv = grpo_argv(tiny_model_dir, tmp_path / objective, "--objective", objective, "--beta", "0", *extra)
        run_grpo(config_of(*argv, "--max_steps", "2"))
        counts[objective] = (passes.count("rollout"), passes.count("update"))
    # one rollout of 2 micro-batches, mu 2: grpo_clip scores 2 x 2 old log-probs; the others none
    assert counts == {"grpo_clip": (4, 4), "wd1": (0, 4), "spg": (0, 4)}


def test_inpaint_fires_on_zero_signal_groups_only_and_never_in_validation(tiny_model_dir, tmp_path, monkeypatch):
    calls: dict[str, list] = {"rollout": [], "validation": []}
    scored: list[list[float]] = []

    def recorder(real, kind):
        def call(model, prompt, options, extras):
            calls[kind].append(None if extras.prefill is None else len(prompt))
            return real(model, prompt, options, extras)

        return call

    def scores(reward_funcs, prompts, completions, columns):
        # about half the prompts earn 0 whatever the completion (zero-signal groups); the others grpo_probe's
        # text reward, which varies within a group
        pairs = zip(prompts, completions, strict=True)
        values = [text_reward(c) if zlib.crc32(str(p).encode()) % 2 else 0.0 for p, c in pairs]
        scored.append(values)
        return torch.tensor([[v] * len(reward_funcs) for v in values])

    monkeypatch.setattr(d1.rl.trainer, "sample", recorder(d1.rl.trainer.sample, "rollout"))
    monkeypatch.setattr(d1.evaluation.generation, "sample", recorder(d1.evaluation.generation.sample, "validation"))
    monkeypatch.setattr(d1.rl.trainer, "score_completions", scores)
    argv = grpo_argv(
        tiny_model_dir, tmp_path, "--zero_signal_groups", "inpaint", "--num_generations", "4",
        "--inpaint_max_replacements", "2", "--inpaint_free_tail", "0", "--validation_size", "4", "--eval_steps", "2",
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--generation_batch_size", "8",
    )  # fmt: skip
    run_grpo(config_of(*argv))
    assert calls["validation"] and set(calls["validation"]) == {None}  # the reference never reaches validation
    hinted = [n for n in calls["rollout"] if n is not None]
    # each micro-batch's first scoring is of its own rollout; a second, of the hinted rows, follows when needed
    originals, i = [], 0
    for _ in range(4):  # 2 rollouts x 2 micro-batches
        rewards = torch.tensor(scored[i]).view(-1, 4)
        zero = int((rewards == rewards[:, :1]).all(1).sum())
        originals.append(zero)
        i += 1 + (zero > 0)
    assert hinted and [4 * z for z in originals if z] == hinted and i == len(scored)


def test_reward_defaults_are_the_tasks_and_named_rewards_weigh_one() -> None:
    task = SudokuTask()
    funcs, weights = resolve_rewards(task, None, None)
    assert [f.__name__ for f in funcs] == ["sudoku_reward_func", "sudoku_solved_reward_func"]
    assert weights == [1.0, 0.0]  # d1's cell reward; the solved rate is only logged
    funcs, weights = resolve_rewards(task, ["sudoku_solved_reward_func"], None)
    assert [f.__name__ for f in funcs] == ["sudoku_solved_reward_func"] and weights == [1.0]


def test_model_without_mask_token(tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / "nomask"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("config.json", "tokenizer_config.json"):
        data = json.loads((folder / name).read_text())
        data.pop("mask_token", None)
        data["mask_token_id"] = None if name == "config.json" else data.get("mask_token_id")
        (folder / name).write_text(json.dumps(data))
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for added in tokenizer["added_tokens"]:
        added["special"] = added["special"] and added["content"] != "<|mdm_mask|>"
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="--mask_token_id"):
        run_grpo(config_of(*grpo_argv(folder, tmp_path / "out")))


@pytest.mark.slow
def test_two_process_cpu_run(tiny_model_dir, tmp_path) -> None:
    # per-device batch 2 with groups of 4: every group spans both processes, so rewards must be gathered
    argv = grpo_argv(
        tiny_model_dir,
        tmp_path,
        "--per_device_train_batch_size",
        "2",
        "--num_generations",
        "4",
        "--generation_batch_size",
        "2",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
    )
    run_on_two_cpu_processes("grpo", *argv)
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "reward" in state["log_history"][0]


ROLLOUT_FLAGS = {
    "cached": ["--rollout_sampler", "cached"],
    "parallel": ["--rollout_sampler", "parallel"],
    "threshold": ["--cache", "dual", "--unmask", "threshold", "--threshold", "0.5"],
    "dream": ["--sampler", "dream", "--alg", "maskgit_plus"],
    "fastdllm_dream": ["--sampler", "fastdllm_dream", "--cache", "dual"],
}


@pytest.mark.parametrize("rollouts", sorted(ROLLOUT_FLAGS))
def test_rollout_samplers_train(family_model_dir, tmp_path, rollouts, capsys) -> None:
    argv = grpo_argv(family_model_dir, tmp_path, "--max_steps", "2", *ROLLOUT_FLAGS[rollouts])
    if rollouts == "dream":  # Dream's sampler has no blocks: its block_length would be refused
        at = argv.index("--block_length")
        del argv[at : at + 2]
    config = config_of(*argv)
    assert config.rollout_options().name == (rollouts if "dream" in rollouts else "llada")
    trainer = run_grpo(config)
    assert trainer.state.global_step == 2 and "reward" in trainer.state.log_history[0]
    assert ("destabilised" in capsys.readouterr().out) == (rollouts in ("parallel", "threshold"))


def test_unknown_rollout_sampler(tiny_model_dir, tmp_path) -> None:
    config = config_of(*grpo_argv(tiny_model_dir, tmp_path / "out"))
    config.rollout_sampler = "fast"  # a YAML value or a Python caller (the command line refuses it itself)
    with pytest.raises(ValueError, match="rollout_sampler='fast' is unknown"):
        run_grpo(config)
    with pytest.raises(SystemExit):
        config_of(*grpo_argv(tiny_model_dir, tmp_path / "out", "--rollout_sampler", "fast"))


def test_block_only_rollout_features_refuse_dream_sampler(tiny_model_dir, tmp_path) -> None:
    argv = grpo_argv(tiny_model_dir, tmp_path / "out", "--sampler", "dream", "--zero_signal_groups", "inpaint")
    at = argv.index("--block_length")
    del argv[at : at + 2]
    with pytest.raises(ValueError, match="zero_signal_groups='inpaint' needs LLaDA's block sampler"):
        config_of(*argv).validate(world_size=1)


def digit_fraction_reward(prompts: list, completions: list, **columns) -> list[float]:
    """A reward a random model can learn fast: the fraction of characters of the completion that are digits."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completion_texts(completions)]


class DigitsTask(SudokuTask):
    name = "digits"
    reward_funcs = [digit_fraction_reward]
    default_reward_weights = [1.0]


@pytest.mark.parametrize("estimator", ["one_step", "coupled"])
def test_grpo_raises_a_learnable_reward(tiny_model_dir, tmp_path, estimator) -> None:
    """The whole loop (rollout, rewards, advantages, log-probs, clipped update) climbs a reward that depends
    only on the completion: about 0.1 (digits among 109 tokens) to over 0.8 in 16 steps at lr 3e-3."""
    data = make_dataset("sudoku", 64, seed=0, output_path=tmp_path / "train.csv", split="train")
    register_task(DigitsTask())
    try:
        argv = grpo_argv(tiny_model_dir, tmp_path / "out")
        del argv[argv.index("--synthetic_train_size") : argv.index("--synthetic_train_size") + 2]
        argv += ["--dataset", "digits", "--data_path", str(data)]
        argv += ["--num_generations", "4", "--per_device_train_batch_size", "64"]
        argv += ["--gradient_accumulation_steps", "1", "--generation_batch_size", "64"]
        argv += [
            "--max_completion_length",
            "8",
            "--learning_rate",
            "3e-3",
            "--beta",
            "0",
            "--max_steps",
            "16",
        ]
        argv += ["--lr_scheduler_type", "constant", "--logp_estimator", estimator, "--train_holdout", "0"]
        trainer = run_grpo(config_of(*argv))
    finally:
        unregister_task("digits")
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 8
    assert sum(rewards[:2]) / 2 < 0.3 and sum(rewards[-2:]) / 2 > 0.6, rewards
