"""`DiffuGRPOConfig`: every `TrainingArguments` field plus diffu-GRPO's, with d1's defaults (`train.yaml`)."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar

from transformers import TrainingArguments

from d1.diffusion.likelihood import BLOCK_ESTIMATORS, ESTIMATORS, FULL_ATTENTION_ESTIMATORS, MCOptions
from d1.diffusion.losses import OBJECTIVE_NEEDS, OBJECTIVES
from d1.diffusion.samplers import (
    LLaDAOptions,
    SamplerOptions,
    default_steps,
    get_sampler,
    options_from,
    sampler_arguments,
    with_default,
)
from d1.models.families import FAMILIES, default_sampler
from d1.models.loading import LORA_TARGETS_HELP, non_reentrant
from d1.sft.config import bf16_available
from d1.utils import check_counts, cpu_only_launch, sharded_launch

GRPO_LORA_TARGETS = list(FAMILIES["llada"].lora_targets)
"""Every projection inside LLaDA's blocks, not its output head (see `models/families.py`)."""


ROLLOUT_SAMPLERS = {
    "exact": {},
    "cached": {"cache": "dual"},
    "parallel": {"cache": "dual", "unmask": "threshold"},
}
"""The shorthands of older configs (`rollout_sampler`): the sampler options each one sets. `parallel` also caps
each block at diffusion_steps / num_blocks passes (`max_block_steps`), the parallel decoding RL has measured."""


ROLLOUT_ORDERS = ("diffusion", "left_to_right")
ZERO_SIGNAL_GROUPS = ("skip", "inpaint")


def _default_of(spec: Field) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default


@dataclass
class DiffuGRPOConfig(sampler_arguments("RolloutSamplerArguments"), TrainingArguments):
    """diffu-GRPO options. Names follow d1 (`num_generations`, `p_mask_prompt`, `num_iterations`, ...).

    One optimizer step is one inner update; a rollout happens every `num_iterations` steps and its
    completions are reused for those `num_iterations` updates, each with its own prompt mask.
    """

    ALIASES: ClassVar[dict[str, str]] = {
        "--max_completion_length": "--gen_length",
        "--steps": "--diffusion_steps",
        "--rollout_threshold": "--threshold",
    }
    """Older spellings that still work: d1's `max_completion_length` (TRL's name), `--steps`, `rollout_threshold`."""
    lora_scope: ClassVar[str] = "blocks"
    """An empty `lora_target_modules` adapts every projection in the family's blocks (`Family.lora_targets`)."""

    # model
    model_path: str = field(
        default="GSAI-ML/LLaDA-8B-Instruct", metadata={"help": "Hub name or local folder."}
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, bfloat16 or float32."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "4-bit base weights (d1's RL set-up; CUDA only)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the checkpoint's own model code."}
    )
    mask_token_id: int | None = field(
        default=None, metadata={"help": "When neither tokenizer nor config has one."}
    )
    lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (d1) instead of all weights."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (d1: 128)."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha (d1: 64)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (d1: 0.05)."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"{LORA_TARGETS_HELP} Default (empty): the model family's, every projection in the blocks, not "
            "the head (d1 adapted q, k, v and up_proj only in LLaDA: its other names do not exist there)."
        },
    )
    # data
    dataset: str = field(default="gsm8k", metadata={"help": "Task: gsm8k, math, countdown or sudoku."})
    data_path: str | None = field(
        default=None,
        metadata={"help": "Local training file in d1's format; default: d1's source for the task."},
    )
    synthetic_train_size: int = field(
        default=0, metadata={"help": "Countdown/Sudoku: generate this many training items offline instead."}
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Replace d1's prompts (RL and validation) by this system prompt + the question; '' = the "
            "question alone (for tiny models, which cannot afford d1's long prompts)."
        },
    )
    train_holdout: int | None = field(
        default=None,
        metadata={
            "help": "Rows dropped after shuffling (d1 keeps 500 countdown/sudoku rows out); default: d1's "
            "for the task, 0 for synthetic data."
        },
    )
    validation_path: str | None = field(
        default=None, metadata={"help": "Training-format file of held-out rows for checkpoint selection."}
    )
    validation_size: int = field(
        default=0,
        metadata={"help": "Training items held out for checkpoint selection (never the test set); 0 = none."},
    )
    # rollout (names as d1)
    num_generations: int = field(default=6, metadata={"help": "Completions per prompt (G)."})
    max_prompt_length: int = field(
        default=200, metadata={"help": "Prompts longer than this keep their last tokens."}
    )
    gen_length: int = with_default(
        "gen_length", 256, "d1 grpo: 256, d1's rollout length (its max_completion_length, accepted as an alias)."
    )
    diffusion_steps: int | None = with_default("diffusion_steps", 128, "d1 grpo: 128 (d1's).")
    temperature: float = with_default(
        "temperature", 0.9, "d1 grpo: 0.9, d1's rollout temperature (validation stays greedy)."
    )
    rollout_sampler: str | None = field(
        default=None,
        metadata={
            "help": "Shorthand of older configs: exact (no cache), cached (--cache dual) or parallel (--cache dual "
            "--unmask threshold, capped at diffusion_steps / num_blocks passes a block; threshold-decoded rollouts "
            "are known to destabilise RL: watch the reward trend). Default: the sampler flags as given.",
            "choices": list(ROLLOUT_SAMPLERS),
        },
    )
    generation_batch_size: int = field(
        default=6, metadata={"help": "Completions generated per sampler call."}
    )
    # objective
    p_mask_prompt: float = field(
        default=0.15, metadata={"help": "Prompt-token masking probability for log-probs."}
    )
    logp_estimator: str = field(
        default="one_step",
        metadata={
            "help": "How a completion's log-likelihood is estimated (docs/rl-methods.md): one_step (d1: completion "
            "fully masked, one pass), coupled (DiffuCoder: two complementary random masks, each token scored once; "
            "2 passes), mc_elbo (the masked-diffusion ELBO from mc_samples random masks, SPG/ESPO; 2 x mc_samples "
            "passes with mc_antithetic), left_to_right (JustGRPO: the exact likelihood of a left-to-right decode, "
            "one pass per token; needs rollout_order=left_to_right); for block-diffusion models (LLaDA 2.x, SDAR), "
            "which refuse the four above: block_elbo (EBPO: the block-wise ELBO, every block noised at its own level, "
            "one block-causal pass over clean + noisy per sample; mc_samples, mc_antithetic) or trajectory "
            "(TraceRL: each rollout step's committed tokens given the canvas before that step; shrinkage)."
        },
    )
    mc_samples: int = field(
        default=2,
        metadata={"help": "logp_estimator=mc_elbo or block_elbo: Monte-Carlo samples k of (t, mask) (SPG/ESPO: 2)."},
    )
    shrinkage: int = field(
        default=1,
        metadata={
            "help": "logp_estimator=trajectory: merge this many neighbouring decoding steps of a block into one "
            "scored step (TraceRL's shrinkage; 1 = every step, exact; s: about 1/s of the passes)."
        },
    )
    mc_blockwise: bool = field(
        default=False,
        metadata={
            "help": "logp_estimator=mc_elbo: mask block by block as the sampler decodes (SPG's block_random): one "
            "block of block_length partly masked, earlier blocks clean, later ones masked."
        },
    )
    mc_t_sampling: str = field(
        default="random",
        metadata={
            "help": "logp_estimator=mc_elbo: random (each sample's masking ratio drawn alone) or stratified (the k "
            "ratios evenly spaced, shifted by one random offset: quadrature points that keep the estimate unbiased)."
        },
    )
    mc_antithetic: bool = field(
        default=True,
        metadata={
            "help": "logp_estimator=mc_elbo or block_elbo: also score each sample's complementary mask (ESPO's "
            "reduce_var; block_elbo: the complement in every block)."
        },
    )
    objective: str = field(
        default="grpo_clip",
        metadata={
            "help": "The RL loss (docs/rl-methods.md): grpo_clip (d1: token-level ratio, clip epsilon, k3 KL beta), "
            "espo (ESPO: sequence-level ratio of ELBOs per token, clip epsilon/epsilon_high, k2 KL beta; needs "
            "mc_elbo), spg (SPG: ELBO for positive advantages, spg_mix_weight of the EUBO for the others; no ratio, "
            "beta 0; needs mc_elbo) or wd1 (wd1: softmax(A)-weighted log-likelihood; no ratio, no old pass, beta 0)."
        },
    )
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clip range (DAPO/ESPO's epsilon_high); default: epsilon."}
    )
    spg_eubo_beta: float = field(
        default=1.0,
        metadata={"help": "objective=spg: the EUBO's beta (SPG: 1.0 Sudoku, 1.5 GSM8K/MATH/Countdown)."},
    )
    spg_mix_weight: float = field(
        default=0.5,
        metadata={"help": "objective=spg: weight of the EUBO in the negative rows' value (1: EUBO, 0: ELBO; SPG: 0.5)."},
    )
    rollout_order: str = field(
        default="diffusion",
        metadata={
            "help": "diffusion (the sampler of block_length/diffusion_steps) or left_to_right (JustGRPO: rollouts "
            "decode one token per step in order, so their likelihood is exact; needs logp_estimator=left_to_right). "
            "Validation and evaluation keep the diffusion sampler."
        },
    )
    zero_signal_groups: str = field(
        default="skip",
        metadata={
            "help": "Groups whose completions all got the same reward carry no signal: skip (d1: their advantages "
            "are 0) or inpaint (IGPO: re-generate some of them with part of the task's reference solution fixed in "
            "place; Sudoku and GSM8K have one; rollouts only, never validation or evaluation)."
        },
    )
    inpaint_fraction: list[float] = field(
        default_factory=lambda: [0.2, 0.6],
        metadata={"help": "zero_signal_groups=inpaint: [low, high] share of reference chunks revealed (IGPO: 0.2 0.6)."},
    )
    inpaint_chunk_size: list[int] = field(
        default_factory=lambda: [5, 10],
        metadata={"help": "zero_signal_groups=inpaint: [min, max] tokens per reference chunk (IGPO: 5 10)."},
    )
    inpaint_max_replacements: int = field(
        default=4,
        metadata={"help": "zero_signal_groups=inpaint: hinted completions that may replace a group's (IGPO: 4)."},
    )
    inpaint_free_tail: int = field(
        default=30,
        metadata={"help": "zero_signal_groups=inpaint: last completion tokens never hinted (IGPO: 30 of 256)."},
    )
    num_iterations: int | None = field(
        default=None,
        metadata={"help": "Inner updates per rollout (mu); default 12, or 8 for countdown/sudoku."},
    )
    random_masking: bool = field(
        default=True,
        metadata={"help": "A fresh prompt mask per iteration (else one fixed mask, as d1's off)."},
    )
    beta: float = field(
        default=0.04, metadata={"help": "KL penalty weight (k3 estimator) against the reference."}
    )
    epsilon: float = field(default=0.5, metadata={"help": "PPO clip range of the per-token ratio."})
    scale_rewards: str = field(
        default="none", metadata={"help": "none (d1: reward - group mean) or group (also / group std)."}
    )
    negative_advantage_scale: float = field(
        default=1.0,
        metadata={
            "help": "Multiplies advantages below 0 (1: d1). 0 learns only from completions better than their "
            "group: lowering a log-prob estimate need not lower the likelihood (docs/rl-at-tiny-scale.md)."
        },
    )
    loss_normalization: str = field(
        default="token",
        metadata={"help": "token (d1's code: mean over batch tokens) or sequence (the paper)."},
    )
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Reward function names; default: the task's (d1's reward_func.py)."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function."}
    )
    log_completions: bool = field(
        default=True, metadata={"help": "Print sample completions every logging_steps."}
    )
    # d1's optimisation choices
    output_dir: str = field(default="grpo_output", metadata={"help": "Checkpoints and logs."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the checkpoints already in the output folder and start over."},
    )
    learning_rate: float = field(default=3e-6, metadata={"help": "Peak learning rate of AdamW (d1: 3e-6)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (d1: 0.9)."})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2 (d1: 0.99)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (d1: 0.1)."})
    max_grad_norm: float = field(default=0.2, metadata={"help": "Gradient clipping norm (d1: 0.2)."})
    per_device_train_batch_size: int = field(
        default=6, metadata={"help": "Completions per process per step; a multiple of num_generations overall (d1: 6)."}
    )
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "Micro-batches per optimizer step (d1: 2)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training prompts (d1: 1)."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every this many steps (d1: 100)."})
    logging_steps: float = field(default=1, metadata={"help": "Log rewards and loss every this many steps."})
    eval_strategy: str = field(
        default="no", metadata={"help": "Validation schedule; 'steps' is set when validation rows are given."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Loggers: tensorboard (default), wandb, none, ..."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the rewards read the dataset's extra columns."}
    )
    bf16: bool = field(
        default_factory=bf16_available, metadata={"help": "bfloat16 mixed precision; default: on where supported."}
    )

    def __post_init__(self) -> None:
        if self.num_iterations is None:
            self.num_iterations = 8 if self.dataset in ("countdown", "sudoku") else 12
        if (self.validation_size > 0 or self.validation_path) and self.eval_strategy == "no":
            self.eval_strategy = "steps"
        if self.eval_strategy != "no":
            self.eval_on_start = True  # the starting model is a candidate for the best checkpoint too
        self.use_cpu = self.use_cpu or cpu_only_launch()
        super().__post_init__()
        # checkpointing is always non-reentrant (under either name of the option)
        self.activation_checkpointing_kwargs = non_reentrant(self.activation_checkpointing_kwargs)
        self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs

    def _changed(self, *names: str) -> list[str]:
        """Which of these options differ from their defaults (set by the user)."""
        defaults = {f.name: _default_of(f) for f in fields(self)}
        return [f"{n}={getattr(self, n)!r}" for n in names if getattr(self, n) != defaults[n]]

    def _refuse_ignored(self, names: tuple[str, ...], why: str) -> None:
        changed = self._changed(*names)
        if changed:
            raise ValueError(f"{', '.join(changed)} would be ignored: {why}. Remove it (or change the method).")

    def _check_method(self) -> None:
        """The RL method's options (estimator, objective, rollout order): the combinations the papers define,
        and no option that the chosen method would silently ignore."""
        if (self.rollout_order == "left_to_right") != (self.logp_estimator == "left_to_right"):
            raise ValueError(
                f"rollout_order={self.rollout_order!r} with logp_estimator={self.logp_estimator!r}: JustGRPO's exact "
                "likelihood is that of a left-to-right decode. Set both to left_to_right, or neither."
            )
        self._check_estimator_options()
        needs = OBJECTIVE_NEEDS[self.objective]
        if needs.reference_estimator == "mc_elbo" and self.logp_estimator not in ("mc_elbo", "block_elbo"):
            raise ValueError(
                f"objective={self.objective!r} is defined on ELBO estimates; set logp_estimator=mc_elbo (block_elbo "
                f"for a block-diffusion model), not {self.logp_estimator!r}."
            )
        if not needs.uses_epsilon:
            self._refuse_ignored(("epsilon", "epsilon_high"), f"objective={self.objective!r} has no ratio to clip")
        elif self.objective != "espo":
            self._refuse_ignored(("epsilon_high",), "only objective=espo clips asymmetrically")
        if not needs.uses_beta and self.beta != 0:
            raise ValueError(
                f"beta={self.beta} with objective={self.objective!r}, which has no KL term (its paper's code "
                "refuses one); set --beta 0."
            )
        self._check_inpaint()
        if self.objective == "wd1" and self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"objective=wd1 weighs completions within their group, so every process needs whole groups: "
                f"per_device_train_batch_size={self.per_device_train_batch_size} is not a multiple of "
                f"num_generations={self.num_generations}."
            )
        if self.objective == "spg":
            if self.spg_eubo_beta <= 0 or not 0 <= self.spg_mix_weight <= 1:
                raise ValueError(
                    f"spg_eubo_beta={self.spg_eubo_beta} must be > 0 and spg_mix_weight={self.spg_mix_weight} in "
                    "[0, 1] (SPG: 1.0 and 0.5 for Sudoku)."
                )
        else:
            self._refuse_ignored(("spg_eubo_beta", "spg_mix_weight"), "they are objective=spg's")

    def _check_estimator_options(self) -> None:
        """The Monte-Carlo and trajectory options apply to their estimators only (block_elbo reads mc_samples and
        mc_antithetic: its blocks are the model's and each block draws its own level)."""
        mc_names = ("mc_samples", "mc_blockwise", "mc_t_sampling", "mc_antithetic")
        if self.logp_estimator == "mc_elbo":
            self.mc_options()  # its own checks name mc_samples and mc_t_sampling
        elif self.logp_estimator == "block_elbo":
            self.mc_options()
            self._refuse_ignored(mc_names[1:3], "logp_estimator=block_elbo masks every block of the model's grid")
        else:
            self._refuse_ignored(mc_names, f"they set the mc_elbo estimator, not logp_estimator={self.logp_estimator!r}")
        if self.logp_estimator in BLOCK_ESTIMATORS:
            self._refuse_ignored(("p_mask_prompt",), f"logp_estimator={self.logp_estimator!r} never masks the prompt")
        if self.logp_estimator == "trajectory":
            if self.shrinkage < 1:
                raise ValueError(f"shrinkage={self.shrinkage} must be >= 1 (1: every decoding step scored).")
        else:
            self._refuse_ignored(("shrinkage",), "it sets logp_estimator=trajectory")

    def check_model(self, model_config: Any) -> None:
        """The estimator against the model's attention, from its config (before any weights load): a
        block-diffusion model (`block_diffusion`) trains with the block estimators only, others without them."""
        block = bool(getattr(model_config, "block_diffusion", False))
        if block and self.logp_estimator in FULL_ATTENTION_ESTIMATORS:
            raise ValueError(
                f"logp_estimator={self.logp_estimator!r} assumes full attention, but model_path={self.model_path!r} "
                f"is a block-diffusion model (model_type {model_config.model_type!r}): its likelihood is "
                "block-causal, so that estimate would train it on the wrong likelihood. Use logp_estimator=block_elbo "
                "(EBPO) or trajectory (TraceRL)."
            )
        if not block and self.logp_estimator in BLOCK_ESTIMATORS:
            raise ValueError(
                f"logp_estimator={self.logp_estimator!r} needs a block-diffusion model (LLaDA 2.x, SDAR); "
                f"model_path={self.model_path!r} attends fully. Use one_step, coupled, mc_elbo or left_to_right."
            )
        sampler = self.rollout_options(model_config).name
        if self.logp_estimator in BLOCK_ESTIMATORS and sampler != "block_diffusion":
            raise ValueError(
                f"logp_estimator={self.logp_estimator!r} scores the block_diffusion sampler's blocks, not "
                f"sampler={self.sampler!r}'s; drop --sampler (the family's) or pass --sampler block_diffusion."
            )
        if self.zero_signal_groups == "inpaint" and "prefill" not in get_sampler(sampler).supports:
            raise ValueError(
                f"zero_signal_groups='inpaint' fixes IGPO's hint tokens in place, which the rollout sampler "
                f"{sampler!r} (model_type {model_config.model_type!r}) cannot do; use zero_signal_groups=skip, or "
                "sampler=llada on a full-attention model."
            )
        sharded = sharded_launch(self)
        if sharded in ("deepspeed-zero3", "fsdp") and "sync_done" not in get_sampler(sampler).supports:
            raise ValueError(
                f"Rollouts with sampler={sampler!r} under {sharded}: sharded weights need the same forward passes on "
                "every process, which this sampler does not keep in step. Launch with DDP (weights not sharded)."
            )

    def _check_sampler(self, model_config: Any = None) -> None:
        """The rollout sampler's options, and the rollout features only LLaDA's block sampler has."""
        options = self.rollout_options(model_config)
        needs = {"rollout_order": self.rollout_order != "diffusion", "zero_signal_groups": self.zero_signal_groups != "skip"}
        for name, used in needs.items():
            if used and not isinstance(options, LLaDAOptions):
                raise ValueError(
                    f"{name}={getattr(self, name)!r} needs LLaDA's block sampler (one token a step in order; tokens "
                    f"fixed in place), not sampler={options.name!r}; pass --sampler llada."
                )

    def _check_inpaint(self) -> None:
        names = ("inpaint_fraction", "inpaint_chunk_size", "inpaint_max_replacements", "inpaint_free_tail")
        if self.zero_signal_groups != "inpaint":
            self._refuse_ignored(names, f"they set zero_signal_groups=inpaint, not {self.zero_signal_groups!r}")
            return
        low_high, sizes = self.inpaint_fraction, self.inpaint_chunk_size
        if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1] <= 1:
            raise ValueError(f"inpaint_fraction={low_high} must be [low, high] with 0 <= low <= high <= 1 (IGPO: 0.2 0.6).")
        if len(sizes) != 2 or not 1 <= sizes[0] <= sizes[1]:
            raise ValueError(f"inpaint_chunk_size={sizes} must be [min, max] with 1 <= min <= max (IGPO: 5 10).")
        if not 1 <= self.inpaint_max_replacements < self.num_generations:
            raise ValueError(
                f"inpaint_max_replacements={self.inpaint_max_replacements} must be in [1, num_generations="
                f"{self.num_generations}): replacing a whole group leaves it without signal again (IGPO: 4 of 8)."
            )
        if not 0 <= self.inpaint_free_tail < self.gen_length:
            raise ValueError(
                f"inpaint_free_tail={self.inpaint_free_tail} must be in [0, gen_length="
                f"{self.gen_length}) (IGPO: 30 of 256)."
            )

    def mc_options(self) -> MCOptions:
        """The mc_elbo estimator's options (block-wise: the sampler's blocks)."""
        return MCOptions(
            samples=self.mc_samples,
            block_length=self.block_length if self.mc_blockwise else 0,
            t_sampling=self.mc_t_sampling,
            antithetic=self.mc_antithetic,
        )

    def rollout_options(self, model_config: Any = None) -> SamplerOptions:
        """The rollouts' sampler options, with `rollout_sampler`'s shorthand applied (a shorthand contradicting an
        explicitly set option is refused): `sampler`, else the family's sampler and its defaults for the model
        of `model_config` (`default_sampler`), else (no config: checks before any model exists) LLaDA's."""
        preset: dict[str, object] = {}
        if self.rollout_sampler is not None and self.rollout_sampler not in ROLLOUT_SAMPLERS:
            raise ValueError(
                f"rollout_sampler={self.rollout_sampler!r} is unknown; use one of {list(ROLLOUT_SAMPLERS)}."
            )
        if self.rollout_sampler is not None:
            preset = dict(ROLLOUT_SAMPLERS[self.rollout_sampler])
            if self.rollout_sampler == "parallel":
                steps = default_steps(self.gen_length, self.diffusion_steps)
                preset["max_block_steps"] = steps * self.block_length // self.gen_length
            clash = self._changed(*preset)
            if clash:
                raise ValueError(
                    f"rollout_sampler={self.rollout_sampler!r} sets {preset}, but {', '.join(clash)} was given too; "
                    "drop rollout_sampler and pass the sampler options alone."
                )
        if self.sampler:
            return options_from(self, self.sampler, overrides=preset)
        family = default_sampler(model_config) if model_config is not None else ("llada", {})
        return options_from(self, *family, overrides=preset)

    def validation_options(self, model_config: Any = None) -> SamplerOptions:
        """Validation's sampler options: the rollouts' sampler, length and steps, greedy and exact."""
        rollout = self.rollout_options(model_config)
        kept = ("gen_length", "block_length", "diffusion_steps")
        return type(rollout)(**{name: getattr(rollout, name) for name in kept if hasattr(rollout, name)})

    def validate(self, world_size: int, model_config: Any = None) -> None:
        """Cheap checks that need no weights; each error names the option, the value and a fix. With the model's
        config (`load_config`), the sampler is the family's and the estimator is checked against its attention."""
        check_counts(
            {
                "per_device_train_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
            }
        )
        global_batch = self.per_device_train_batch_size * world_size
        if global_batch % self.num_generations:
            working = [g for g in range(2, global_batch + 1) if global_batch % g == 0]
            raise ValueError(
                f"num_generations={self.num_generations} does not divide the global batch per_device_train_batch_size"
                f" x processes = {self.per_device_train_batch_size} x {world_size} = {global_batch}. Values that "
                f"work: {working}; or change per_device_train_batch_size."
            )
        if model_config is not None:
            self.check_model(model_config)
        self._check_sampler(model_config)
        if self.generation_batch_size < 1 or self.num_iterations < 1:
            raise ValueError("generation_batch_size and num_iterations must be >= 1.")
        for name, known in (
            ("scale_rewards", ("none", "group")),
            ("loss_normalization", ("token", "sequence")),
            ("logp_estimator", ESTIMATORS),
            ("objective", OBJECTIVES),
            ("rollout_order", ROLLOUT_ORDERS),
            ("zero_signal_groups", ZERO_SIGNAL_GROUPS),
        ):
            if getattr(self, name) not in known:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; use one of {list(known)}.")
        self._check_method()
        if not 0.0 <= self.negative_advantage_scale <= 1.0:
            raise ValueError(
                f"negative_advantage_scale={self.negative_advantage_scale} is outside [0, 1]; use 1 (d1) to keep "
                "negative advantages, 0 to drop them, or a value between."
            )
        if self.beta > 0 and not self.lora and self.load_in_4bit:
            raise ValueError(
                "beta > 0 needs a reference policy, but a 4-bit model can only be trained with LoRA (whose disabled "
                "adapter is the reference). Use --lora, or --beta 0."
            )
        sharded = sharded_launch(self)
        if self.beta > 0 and not self.lora and sharded in ("deepspeed-zero3", "fsdp"):
            raise ValueError(
                f"beta={self.beta} with full fine-tuning (lora=False) under {sharded}: the reference policy "
                "would be a frozen deep copy of sharded weights (a copy of one shard, or a full unsharded copy "
                "on every GPU). Use --lora (the reference is the base with the adapter disabled), or --beta 0."
            )
