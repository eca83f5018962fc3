"""`DemoConfig` (every knob of `d1 demo`), its stages' names and its table's rows: shared by the pipeline and
the report, so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

from d1.tasks.synthetic import check_empty_cells

FAMILY_RECIPES = {
    False: {
        "block_length": 28, "logp_estimator": "coupled", "rollout_sampler": "cached", "rl_learning_rate": 2e-4,
        "rl_empty_cells": [2, 6], "rl_base_hints": True,
    },
    True: {
        "block_length": 4, "logp_estimator": "block_elbo", "rollout_sampler": None, "rl_learning_rate": 2e-5,
        "rl_empty_cells": [8, 8], "rl_base_hints": False,
    },
}  # fmt: skip
"""The demo's settings that depend on whether the family is block-diffusion (keyed by `block_diffusion`); the
block recipe's RL choices are measured in docs/rl-at-tiny-scale.md, section 7."""

ROWS = ("base", "sft", "rl_base", "d1")
ROW_NAMES = {
    "base": "base (pre-trained)",
    "sft": "+SFT",
    "rl_base": "+diffu-GRPO",
    "d1": "d1 (SFT + diffu-GRPO)",
}
"""The rows' names in the report (`DemoConfig.row_names` adds how +diffu-GRPO was helped, if it was)."""
STAGES = ("init", "pretrain", "sft", "rl_base", "d1", "eval")
"""The pipeline's stages in order (`demo/pipeline.py` runs them; `--stop_after` names one)."""
_RL = ("rl_base_steps", "rl_base_hints", "rl_learning_rate", "num_generations", "rl_prompts_per_step",
       "num_iterations", "rl_empty_cells", "rl_gen_length", "rl_diffusion_steps", "temperature", "logp_estimator",
       "reward_funcs", "negative_advantage_scale", "rollout_sampler")  # fmt: skip
FIRST_STAGE = {
    **dict.fromkeys(("n_sft", "n_rl", "n_validation", "n_test", "trace", "pretrain_steps", "batch_size",
                     "learning_rate", "lr_scheduler_type", "max_length", "block_length"), "pretrain"),
    "sft_steps": "sft",
    **dict.fromkeys(_RL, "rl_base"),
    "rl_steps": "d1",
    **dict.fromkeys(("eval_gen_lengths", "eval_batch_size"), "eval"),
    **dict.fromkeys(("output_dir", "stop_after"), None),
}  # fmt: skip
"""The first stage that reads each setting (None: no stage; a setting not named here: init). A run continued in
the same folder may change a setting only while that stage has not finished (`pipeline.check_same_settings`)."""


def _option(default: object, help: str) -> object:
    """A field with its `d1 demo --help` text (a list default is copied per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DemoConfig:
    """Every knob of the demo; `--quick` shrinks the budgets so the same pipeline runs in about 2 minutes."""

    output_dir: str = _option("runs/demo", "Folder of the run: data, models, eval files, report.md.")
    seed: int = _option(0, "Seed of the data, the models' initialisation and every trainer.")
    quick: bool = _option(
        False, "Small budgets and the tiny preset (200 SFT/RL items, 48 test puzzles): about 2 minutes."
    )
    family: str = _option(
        "llada",
        "Model architecture (models/families.py): llada, dream, or the block-diffusion llada2 (MoE) and sdar.",
    )
    preset: str = _option("small", "Model size preset: tiny or small (`--quick` uses tiny).")
    trace: str = _option(
        "none",
        "Reasoning in the SFT answers: none (the answer alone), cells (one line) or steps (a line per cell).",
    )
    # `sft` leaves the SFT model for benchmarks/rl_methods.py; running again without it continues from there
    stop_after: str = _option(
        "eval", f"Last stage to run, one of {list(STAGES)}; run again without it to continue."
    )
    n_sft: int = _option(2000, "SFT traces (Sudoku puzzles with their answers).")
    n_rl: int = _option(2000, "RL training puzzles.")
    n_validation: int = _option(100, "Validation puzzles that pick the best RL checkpoint.")
    n_test: int = _option(200, "Test puzzles of the accuracy table (solutions unseen in training).")
    pretrain_steps: int = _option(300, "Optimizer steps of the generic masked-diffusion pre-training.")
    sft_steps: int = _option(250, "Optimizer steps of masked SFT.")
    rl_steps: int = _option(160, "Optimizer steps of the d1 stage's diffu-GRPO (rollouts x num_iterations).")
    # hinted rollouts cost about 3x; validation is within 2 cells of its best by step 80 (docs/rl-at-tiny-scale.md,
    # section 6)
    rl_base_steps: int = _option(80, "Optimizer steps of the +diffu-GRPO stage (RL from the base model).")
    rl_base_hints: bool | None = _option(
        None,
        "IGPO's hints (`d1 grpo --zero_signal_groups inpaint`) in the +diffu-GRPO stage, whose rollouts from the "
        "base model are never rewarded without them; default on, off for a block-diffusion family (its sampler "
        "cannot fix hint tokens in place).",
    )
    batch_size: int = _option(64, "Rows per step of pre-training and SFT.")
    learning_rate: float = _option(1e-3, "Learning rate of pre-training and SFT.")
    # no decay: a checkpoint whose learning rate was annealed to 0 loses accuracy under any small-batch update
    # at RL's learning rate, ground-truth SFT included (docs/rl-at-tiny-scale.md)
    lr_scheduler_type: str = _option(
        "constant_with_warmup", "Schedule of pre-training and SFT (a transformers scheduler name)."
    )
    # twice the tiny recipe's 1e-4: the easier RL puzzles below reward more rollouts, and 2e-4 stayed stable
    # on them (docs/rl-at-tiny-scale.md, section 5)
    rl_learning_rate: float | None = _option(
        None, "Learning rate of diffu-GRPO (constant); default 2e-4, 2e-5 for a block-diffusion family."
    )
    num_generations: int = _option(8, "Completions per RL prompt (the group size G).")
    rl_prompts_per_step: int = _option(16, "Prompts per rollout.")
    num_iterations: int = _option(4, "Updates per rollout (d1's mu).")
    # an SFT model that solves 4% of 8-blank puzzles is rewarded too rarely to learn in 40 rollouts
    # (docs/rl-at-tiny-scale.md, section 5)
    rl_empty_cells: list[int] | None = _option(
        None,
        "Fewest and most blanks of the RL puzzles (validation and test keep d1's 8); default 2 6, d1's 8 8 for a "
        "block-diffusion family (its SFT model solves most 8-blank puzzles already).",
    )
    rl_gen_length: int = _option(28, "Completion tokens of RL rollouts.")
    rl_diffusion_steps: int = _option(14, "Sampler steps of RL rollouts.")
    temperature: float = _option(1.0, "Sampling temperature of RL rollouts.")
    # the tiny RL recipe (configs/grpo/tiny-sudoku.yaml; each choice measured in docs/rl-at-tiny-scale.md):
    # with d1's one-step estimate, cell reward and negative advantages the d1 stage loses accuracy
    logp_estimator: str | None = _option(
        None,
        "Log-prob estimator of diffu-GRPO (`d1 grpo --logp_estimator`); default coupled, block_elbo for a "
        "block-diffusion family (whose attention the coupled estimate does not model).",
    )
    reward_funcs: list[str] = _option(
        ["sudoku_solved_reward_func"], "Sudoku reward functions of RL (`d1 grpo --reward_funcs`)."
    )
    negative_advantage_scale: float = _option(
        0.0, "Weight of negative advantages in [0, 1] (0: learn from better-than-average rollouts only)."
    )
    # cached: RL trains 2.1x faster than with exact rollouts and gained as much or more in 3 seeds; adding the
    # threshold is faster still but gained less (docs/performance.md, "Fast rollouts inside RL")
    rollout_sampler: str | None = _option(
        None,
        "Sampler shorthand of RL rollouts (`d1 grpo --rollout_sampler`); default cached (LLaDA's sampler with a "
        "dual KV cache) for a full-attention family, none (the family's own sampler) for a block-diffusion one. "
        "Evaluation uses the family's sampler.",
    )
    eval_gen_lengths: list[int] = _option([28, 56], "Generation lengths of the test evaluation.")
    eval_batch_size: int = _option(100, "Puzzles per evaluation batch.")
    block_length: int | None = _option(
        None,
        "Block length of RL rollouts and evaluation, and of a block-diffusion family's training; default 28 (an "
        "RL answer is one block), 4 for a block-diffusion family (SDAR's; LLaDA 2.x's 32 exceeds the answers).",
    )
    max_length: int = _option(104, "Token length of pre-training and SFT rows.")

    def row_names(self) -> dict[str, str]:
        """`ROW_NAMES`, the +diffu-GRPO row labelled with IGPO's hints when its rollouts had them."""
        return {**ROW_NAMES, "rl_base": ROW_NAMES["rl_base"] + (" (IGPO hints)" if self.rl_base_hints else "")}

    @property
    def block_diffusion(self) -> bool:
        """Whether `family` decodes and trains block by block (LLaDA 2.x, SDAR)."""
        from d1.models.families import family

        return bool(getattr(family(self.family).config_class, "block_diffusion", False))

    def __post_init__(self) -> None:
        if self.quick:
            self.n_sft, self.n_rl, self.n_validation, self.n_test = 200, 200, 16, 48
            self.pretrain_steps, self.sft_steps, self.rl_steps, self.rl_base_steps = 40, 30, 8, 8
            self.preset = "tiny"
        if self.stop_after not in STAGES:
            raise ValueError(
                f"stop_after={self.stop_after!r} is not a stage; use one of {list(STAGES)} (default eval)."
            )
        for name, value in FAMILY_RECIPES[self.block_diffusion].items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        check_empty_cells(self.rl_empty_cells, "rl_empty_cells")
        from transformers import SchedulerType

        schedulers = [kind.value for kind in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(
                f"lr_scheduler_type={self.lr_scheduler_type!r} is not a transformers scheduler; use one of "
                f"{schedulers} (the demo's default is constant_with_warmup)."
            )
