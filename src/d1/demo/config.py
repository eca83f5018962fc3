"""`DemoConfig` (every knob of `d1 demo`), its stages' names and its table's rows: shared by the pipeline and
the report, so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

from d1.tasks.synthetic import check_empty_cells

ROWS = ("base", "sft", "rl_base", "d1")
ROW_NAMES = {
    "base": "base (pre-trained)",
    "sft": "+SFT",
    "rl_base": "+diffu-GRPO",
    "d1": "d1 (SFT + diffu-GRPO)",
}
STAGES = ("init", "pretrain", "sft", "rl_base", "d1", "eval")
"""The pipeline's stages in order (`demo/pipeline.py` runs them; `--stop_after` names one)."""


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
    family: str = _option("llada", "Model architecture: llada or dream (models/families.py; not yet the block-diffusion ones).")
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
    rl_steps: int = _option(160, "Optimizer steps of each diffu-GRPO stage (rollouts x num_iterations).")
    batch_size: int = _option(64, "Rows per step of pre-training and SFT.")
    learning_rate: float = _option(1e-3, "Learning rate of pre-training and SFT.")
    # no decay: a checkpoint whose learning rate was annealed to 0 loses accuracy under any small-batch update
    # at RL's learning rate, ground-truth SFT included (docs/rl-at-tiny-scale.md)
    lr_scheduler_type: str = _option(
        "constant_with_warmup", "Schedule of pre-training and SFT (a transformers scheduler name)."
    )
    # twice the tiny recipe's 1e-4: the easier RL puzzles below reward more rollouts, and 2e-4 stayed stable
    # on them (docs/rl-at-tiny-scale.md, section 5)
    rl_learning_rate: float = _option(2e-4, "Learning rate of diffu-GRPO (constant).")
    num_generations: int = _option(8, "Completions per RL prompt (the group size G).")
    rl_prompts_per_step: int = _option(16, "Prompts per rollout.")
    num_iterations: int = _option(4, "Updates per rollout (d1's mu).")
    # an SFT model that solves 4% of 8-blank puzzles is rewarded too rarely to learn in 40 rollouts
    # (docs/rl-at-tiny-scale.md, section 5)
    rl_empty_cells: list[int] = _option(
        [2, 6], "Fewest and most blanks of the RL puzzles (validation and test keep d1's 8)."
    )
    rl_gen_length: int = _option(28, "Completion tokens of RL rollouts.")
    rl_diffusion_steps: int = _option(14, "Sampler steps of RL rollouts.")
    temperature: float = _option(1.0, "Sampling temperature of RL rollouts.")
    # the tiny RL recipe (configs/grpo/tiny-sudoku.yaml; each choice measured in docs/rl-at-tiny-scale.md):
    # with d1's one-step estimate, cell reward and negative advantages the d1 stage loses accuracy
    logp_estimator: str = _option("coupled", "Log-prob estimator of diffu-GRPO (`d1 grpo --logp_estimator`).")
    reward_funcs: list[str] = _option(
        ["sudoku_solved_reward_func"], "Sudoku reward functions of RL (`d1 grpo --reward_funcs`)."
    )
    negative_advantage_scale: float = _option(
        0.0, "Weight of negative advantages in [0, 1] (0: learn from better-than-average rollouts only)."
    )
    # 3x faster on CPU, validation as with the exact sampler (docs/rl-at-tiny-scale.md)
    rollout_sampler: str = _option(
        "cached", "Sampler of RL rollouts (`d1 grpo --rollout_sampler`); evaluation always uses the exact one"
    )
    eval_gen_lengths: list[int] = _option([28, 56], "Generation lengths of the test evaluation.")
    eval_batch_size: int = _option(100, "Puzzles per evaluation batch.")
    block_length: int = _option(28, "Semi-autoregressive block length of RL rollouts and evaluation.")
    max_length: int = _option(104, "Token length of pre-training and SFT rows.")

    def __post_init__(self) -> None:
        if self.quick:
            self.n_sft, self.n_rl, self.n_validation, self.n_test = 200, 200, 16, 48
            self.pretrain_steps, self.sft_steps, self.rl_steps = 40, 30, 8
            self.preset = "tiny"
        check_empty_cells(self.rl_empty_cells, "rl_empty_cells")
        if self.stop_after not in STAGES:
            raise ValueError(
                f"stop_after={self.stop_after!r} is not a stage; use one of {list(STAGES)} (default eval)."
            )
        from d1.models.families import family

        if getattr(family(self.family).config_class, "block_diffusion", False):
            raise ValueError(
                f"family={self.family!r} is a block-diffusion family: the demo's stages and recipe are built for "
                "the full-attention families and have no block-diffusion version yet. Use --family llada or dream."
            )
        from transformers import SchedulerType

        schedulers = [kind.value for kind in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(
                f"lr_scheduler_type={self.lr_scheduler_type!r} is not a transformers scheduler; use one of "
                f"{schedulers} (the demo's default is constant_with_warmup)."
            )
