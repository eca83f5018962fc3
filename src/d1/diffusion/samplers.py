"""The sampler registry: every reverse process d1 can run, each a name, a typed options dataclass and a function.

Every command (`d1 eval`, `d1 grpo`, `d1 chat`, `d1 harness`, the demo) and the Python API build their sampler
options from here, so an option has one name, one default, one help text and one validation everywhere.
A sampler's options class lists the fields it reads; fields of the same name are declared once (in the mixins
below) and shared. `SAMPLERS` maps a name to its `Sampler`; `sample(model, prompt_ids, options, ...)` runs the
sampler that `options` belongs to. Adding a sampler is one options class and one `register` call.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from d1.diffusion.block_diffusion import BlockDiffusionSampling, generate_blocks
from d1.diffusion.dream_block_sampling import DreamBlockSampling, generate_dream_blocks
from d1.diffusion.dream_sampling import ALGS, DreamSampling, diffusion_generate
from d1.diffusion.sampling import (
    CACHES,
    REMASKING,
    UNMASKS,
    check_block_schedule,
    check_settings,
    generate,
    resolve_token_id,
)
from d1.diffusion.trace import Trace
from d1.utils import set_by_user


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A sampler option: its default, help text and (for named choices) the allowed values."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    return field(default=default, metadata=metadata)


CACHE_CHOICES = ("none", *(c for c in CACHES if c is not None))


def default_steps(gen_length: int, diffusion_steps: int | None) -> int:
    """`diffusion_steps`, or d1's default `gen_length // 2` (at least 1) when unset."""
    return diffusion_steps if diffusion_steps is not None else max(gen_length // 2, 1)


@dataclass
class SamplerOptions:
    """The options every sampler reads: the completion's length, the number of model calls and the temperature."""

    name: ClassVar[str] = ""

    gen_length: int = option(128, "Generated tokens per answer (the diffusion canvas).")
    diffusion_steps: int | None = option(
        None, "Denoising steps (model calls) over the whole answer; default gen_length // 2 (d1)."
    )
    temperature: float = option(0.0, "Sampling temperature of the predicted tokens; 0 = greedy.")

    @property
    def steps(self) -> int:
        """`diffusion_steps`, d1's default `gen_length // 2` (at least 1) when unset."""
        return default_steps(self.gen_length, self.diffusion_steps)

    def validate(self) -> None:
        """Reject bad settings before any model loads, naming the option, the value and what would work."""
        for name in ("gen_length", "diffusion_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature={self.temperature} must be a finite number >= 0 (0 = greedy).")

    def recorded(self) -> dict[str, Any]:
        """What a generation file records of these options: the sampler and each option (steps resolved)."""
        return {"sampler": self.name, **dataclasses.asdict(self), "diffusion_steps": self.steps}


@dataclass
class BlockOptions:
    """Semi-autoregressive decoding: the completion is decoded block by block, left to right."""

    block_length: int = option(
        32, "Block length of semi-autoregressive decoding (gen_length must be a multiple)."
    )


@dataclass
class UnmaskOptions:
    """Parallel unmasking: how many tokens a step commits."""

    unmask: str = option(
        "schedule",
        "How many tokens a step commits: schedule (the sampler's fixed count per step), threshold (every token "
        "with confidence >= threshold, at least one; Fast-dLLM. block_diffusion: every token above threshold "
        "when at least the step's count are, else that count; LLaDA 2.x, SDAR), factor (Fast-dLLM's factor "
        "rule), factor_strict (the longest run of the n most confident with the n-th >= 1 - factor / (n + 1)).",
        UNMASKS,
    )
    threshold: float = option(
        0.9,
        "unmask=threshold: the confidence a token needs to be committed (Fast-dLLM: 0.9; LLaDA 2.x: 0.95).",
    )


@dataclass
class FastOptions(UnmaskOptions):
    """Fast-dLLM's approximations: a block KV cache and parallel (confidence-threshold) unmasking."""

    cache: str = option(
        "none",
        "Block KV cache (Fast-dLLM): none = exact; prefix = cache the prompt and finished blocks; dual = also "
        "the masked suffix.",
        CACHE_CHOICES,
    )

    def cache_arg(self) -> str | None:
        """The cache as the samplers' functions take it (None for no cache)."""
        return None if self.cache in (None, "none") else self.cache

    def recorded(self) -> dict[str, Any]:
        """The sampler's recorded options (the next class's in the MRO), the cache as the function takes it."""
        return {**super().recorded(), "cache": self.cache_arg()}  # type: ignore[misc]


@dataclass
class Truncation:
    """Truncation of the token distribution before a token is picked."""

    top_p: float | None = option(
        None, "Nucleus truncation of the token distribution; none = off (Dream's default)."
    )
    top_k: int | None = option(
        None, "Top-k truncation of the token distribution; none = off (Dream's default)."
    )


@dataclass
class DreamRules(Truncation):
    """Dream's token and position rules (its `diffusion_generate` settings)."""

    alg: str = option(
        "entropy",
        "Dream's confidence: entropy (negative entropy; Dream's recommendation), maskgit_plus (top probability), "
        "topk_margin (top-1 minus top-2) or origin (random positions).",
        ALGS,
    )
    alg_temp: float | None = option(
        None, "Sample positions from softmax(confidence / alg_temp); none = most confident."
    )
    eps: float = option(1e-3, "Dream's final time: the schedule runs over linspace(1, eps, steps + 1).")


@dataclass
class LLaDAOptions(FastOptions, BlockOptions, SamplerOptions):
    """LLaDA's block sampler (`d1.generate`), with Fast-dLLM's cache and parallel unmasking (any family)."""

    name: ClassVar[str] = "llada"

    remasking: str = option(
        "low_confidence",
        "Which predicted tokens a step commits: low_confidence (the most probable) or random.",
        REMASKING,
    )
    cfg_scale: float = option(0.0, "Classifier-free guidance scale; 0 = off.")
    factor: float = option(1.0, "unmask=factor/factor_strict: Fast-dLLM's factor (about 1).")
    max_block_steps: int | None = option(
        None,
        "unmask=threshold/factor: at most this many model calls a block, committing enough tokens a step to "
        "finish in time; none = until the block is done (Fast-dLLM).",
    )
    early_stop: bool = option(
        False, "Stop once every row's decoded blocks end in EOS, filling the rest with EOS."
    )
    logits_eos_inf: bool = option(False, "Never predict EOS (LLaDA's logits_eos_inf).")
    confidence_eos_eot_inf: bool = option(
        False, "Commit EOS/EoT predictions last (LLaDA's confidence_eos_eot_inf)."
    )

    def validate(self) -> None:
        super().validate()
        check_settings(**self.generate_kwargs(), names=("gen_length", "block_length", "diffusion_steps"))

    def generate_kwargs(self) -> dict[str, Any]:
        """`d1.generate`'s keyword arguments for these options."""
        options = dataclasses.asdict(self)
        options.pop("diffusion_steps")
        return {**options, "steps": self.steps, "cache": self.cache_arg()}


@dataclass
class DreamOptions(DreamRules, SamplerOptions):
    """Dream's own `diffusion_generate`: the whole completion denoised at once, no blocks."""

    name: ClassVar[str] = "dream"

    def validate(self) -> None:
        super().validate()
        self.settings().validate()

    def settings(self) -> DreamSampling:
        """Dream's `DreamSampling` for these options."""
        return DreamSampling(
            max_new_tokens=self.gen_length, steps=self.steps, temperature=self.temperature, alg=self.alg,
            alg_temp=self.alg_temp, top_p=self.top_p, top_k=self.top_k, eps=self.eps,
        )  # fmt: skip


@dataclass
class FastDreamOptions(FastOptions, BlockOptions, DreamRules, SamplerOptions):
    """Fast-dLLM's cached Dream sampler: blocks with a refresh pass that commits each block's first token,
    Dream's schedule (or a threshold) inside the block, negative-entropy confidence."""

    name: ClassVar[str] = "fastdllm_dream"

    def validate(self) -> None:
        super().validate()
        if self.unmask not in ("schedule", "threshold"):
            raise ValueError(
                f"unmask={self.unmask!r}: sampler 'fastdllm_dream' decodes by Dream's schedule or a threshold "
                "(Fast-dLLM's confidence_threshold); use unmask=schedule or unmask=threshold."
            )
        self.sampling().validate()

    def sampling(self) -> DreamBlockSampling:
        """`generate_dream_blocks`' options for these options."""
        return DreamBlockSampling(
            gen_length=self.gen_length, block_length=self.block_length, steps=self.steps,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, alg=self.alg, alg_temp=self.alg_temp,
            eps=self.eps, threshold=self.threshold if self.unmask == "threshold" else None, cache=self.cache_arg(),
        )  # fmt: skip


@dataclass
class BlockDiffusionOptions(UnmaskOptions, Truncation, BlockOptions, SamplerOptions):
    """Block diffusion (LLaDA 2.x, SDAR): blocks on a grid from the prompt's first token, block-causal attention,
    finished blocks cached (exact)."""

    name: ClassVar[str] = "block_diffusion"

    def validate(self) -> None:
        super().validate()
        check_block_schedule(
            self.gen_length, self.block_length, self.steps, ("gen_length", "block_length", "diffusion_steps")
        )
        if self.unmask not in ("schedule", "threshold"):
            raise ValueError(
                f"unmask={self.unmask!r}: sampler 'block_diffusion' commits each step's count (schedule) or the "
                "tokens above a threshold (threshold, LLaDA 2.x's and SDAR's rule); use one of those."
            )
        self.sampling().validate()

    def sampling(self) -> BlockDiffusionSampling:
        """`generate_blocks`' settings: `diffusion_steps` over the answer become the official steps per block."""
        return BlockDiffusionSampling(
            gen_length=self.gen_length, block_length=self.block_length,
            steps=BlockDiffusionSampling.steps_per_block(self.gen_length, self.block_length, self.steps), temperature=self.temperature,
            threshold=self.threshold if self.unmask == "threshold" else None, top_k=self.top_k, top_p=self.top_p,
        )  # fmt: skip


# ---------------------------------------------------------------- the registry


@dataclass
class SamplerCall:
    """What a caller passes besides the options: padding, noise, token ids and optional outputs.

    `stats` receives "forward_passes"; `trace` is filled with each step's decisions; `sync_done` (sharded
    weights: equal forward passes on every process) and `prefill` (tokens fixed in place) are honoured by the
    samplers that list them in `supports` (a sampler whose passes are fixed by its options honours `sync_done`
    by doing nothing)."""

    attention_mask: torch.Tensor | None = None
    generator: torch.Generator | None = None
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    stats: dict | None = None
    trace: Trace | None = None
    sync_done: Callable[[bool], bool] | None = None
    prefill: torch.Tensor | None = None


@dataclass(frozen=True)
class Sampler:
    """One registered sampler: its options class, the function and the extras of `SamplerCall` it supports."""

    options: type[SamplerOptions]
    run: Callable[[nn.Module, torch.Tensor, Any, SamplerCall], torch.Tensor]
    supports: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def summary(self) -> str:
        return (self.options.__doc__ or "").strip().splitlines()[0]


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add a sampler; its options must agree (type, default, help, choices) with every other sampler's options
    of the same name, so one command-line flag can serve them all."""
    SAMPLERS[sampler.name] = sampler
    option_fields()  # raises naming the disagreement
    return sampler


def _run_llada(
    model: nn.Module, prompt_ids: torch.Tensor, options: LLaDAOptions, call: SamplerCall
) -> torch.Tensor:
    extras = {
        spec.name: getattr(call, spec.name) for spec in dataclasses.fields(call)
    }  # not asdict: no copies
    return generate(model, prompt_ids, **options.generate_kwargs(), **extras)


def _run_dream(
    model: nn.Module, prompt_ids: torch.Tensor, options: DreamOptions, call: SamplerCall
) -> torch.Tensor:
    settings = {k: v for k, v in dataclasses.asdict(options.settings()).items() if v is not None}
    settings["mask_token_id"] = call.mask_token_id
    output = diffusion_generate(
        model, prompt_ids, attention_mask=call.attention_mask, generator=call.generator, trace=call.trace,
        **settings,
    )  # fmt: skip
    if call.stats is not None:
        call.stats.update(forward_passes=options.steps, steps=options.steps)
    return output


def get_sampler(name: str) -> Sampler:
    """The sampler called `name`; an error listing the registered ones otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; use one of {sorted(SAMPLERS)}.")
    return SAMPLERS[name]


def option_fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every option of every registered sampler, once by name, with its type: the union the commands offer."""
    union: dict[str, tuple[Any, dataclasses.Field]] = {}
    for sampler in SAMPLERS.values():
        hints = typing.get_type_hints(sampler.options)
        for spec in dataclasses.fields(sampler.options):
            kind, known = union.setdefault(spec.name, (hints[spec.name], spec))
            if (known.default, known.metadata, kind) != (spec.default, spec.metadata, hints[spec.name]):
                raise TypeError(f"sampler {sampler.name!r} redeclares option {spec.name!r} differently.")
    return union


def readers(option_name: str) -> list[str]:
    """The samplers that read `option_name`."""
    return [
        s.name for s in SAMPLERS.values() if option_name in {f.name for f in dataclasses.fields(s.options)}
    ]


def build_options(
    sampler: str, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> SamplerOptions:
    """`sampler`'s options from a flat mapping of option values (a command's config), validated.

    An option another sampler reads but this one does not is refused when it differs from its default
    (`defaults`: the command's, else the registry's), so that nothing a user set is silently ignored."""
    chosen = get_sampler(sampler)
    own = {f.name for f in dataclasses.fields(chosen.options)}
    union = option_fields()
    ignored = [
        f"{name}={value!r}"
        for name, value in values.items()
        if name in union and name not in own and value != (defaults or {}).get(name, union[name][1].default)
    ]
    if ignored:
        owners = sorted({reader for item in ignored for reader in readers(item.split("=")[0])})
        raise ValueError(
            f"{', '.join(ignored)}: option(s) of sampler(s) {owners}, which sampler={sampler!r} does not read. "
            f"Drop them, or choose one of those samplers."
        )
    options = chosen.options(**{name: values[name] for name in own if name in values})
    options.validate()
    return options


def options_from(
    config: Any, sampler: str, presets: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> SamplerOptions:
    """`sampler`'s options from a command's config dataclass (built on `sampler_arguments()`), the config's own
    defaults deciding what counts as set (a command may default an option differently). `presets` (a model
    family's defaults) replace the options the user did not set (`d1.utils.set_by_user`; for a config built in
    code, those left at their default); `overrides` replace any."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    values = {name: getattr(config, name) for name in option_fields() if hasattr(config, name)}
    given = set_by_user(config)
    unset = {
        name: value
        for name, value in (presets or {}).items()
        if (name not in given if given is not None else values.get(name) == defaults.get(name))
    }
    return build_options(sampler, {**values, **unset, **(overrides or {})}, {**defaults, **unset})


def with_default(name: str, default: Any, why: str) -> Any:
    """The registry's option `name` with another default for one command, `why` appended to its help."""
    spec = option_fields()[name][1]
    return option(default, f"{spec.metadata['help']} {why}", spec.metadata.get("choices"))


def sample(
    model: nn.Module, prompt_ids: torch.Tensor, options: SamplerOptions, call: SamplerCall | None = None
) -> torch.Tensor:
    """Prompt plus generated tokens [B, P + gen_length] from the sampler `options` belongs to."""
    sampler = get_sampler(options.name)
    call = call or SamplerCall()
    unsupported = [
        name
        for name in ("sync_done", "prefill")
        if getattr(call, name) is not None and name not in sampler.supports
    ]
    if unsupported:
        raise ValueError(f"sampler {sampler.name!r} does not support {unsupported}; use sampler='llada'.")
    return sampler.run(model, prompt_ids, options, call)


def sampler_arguments(base_name: str = "SamplerArguments") -> type:
    """A dataclass of `sampler` plus every registered sampler's options (one flag each), for command configs."""
    specs = [
        (
            "sampler",
            str | None,
            option(
                None,
                "The reverse process: "
                + "; ".join(f"{s.name} ({s.summary.rstrip('.')})" for s in SAMPLERS.values())
                + ". Default: the model family's (models/families.py).",
                tuple(SAMPLERS),
            ),
        )
    ]
    for name, (kind, spec) in option_fields().items():
        specs.append((name, kind, field(default=spec.default, metadata=dict(spec.metadata))))
    return dataclasses.make_dataclass(base_name, specs)


def _run_fast_dream(
    model: nn.Module, prompt_ids: torch.Tensor, options: FastDreamOptions, call: SamplerCall
) -> torch.Tensor:
    if call.sync_done is not None and options.unmask != "schedule":
        raise ValueError(
            "sampler 'fastdllm_dream' with unmask=threshold takes a data-dependent number of passes, which sharded "
            "weights (ZeRO-3, FSDP) cannot follow; use unmask=schedule or sampler 'llada'."
        )
    return generate_dream_blocks(
        model, prompt_ids, **dataclasses.asdict(options.sampling()), mask_token_id=call.mask_token_id,
        attention_mask=call.attention_mask, generator=call.generator, trace=call.trace, stats=call.stats,
    )  # fmt: skip


def _run_blocks(
    model: nn.Module, prompt_ids: torch.Tensor, options: BlockDiffusionOptions, call: SamplerCall
) -> torch.Tensor:
    return generate_blocks(
        model, prompt_ids, options.sampling(), mask_token_id=resolve_token_id(model, call.mask_token_id, "mask_token_id"),
        eos_token_id=resolve_token_id(model, call.eos_token_id, "eos_token_id"), attention_mask=call.attention_mask,
        generator=call.generator, trace=call.trace, stats=call.stats,
    )  # fmt: skip


register(Sampler(LLaDAOptions, _run_llada, frozenset({"sync_done", "prefill"})))
register(
    Sampler(DreamOptions, _run_dream, frozenset({"sync_done"}))
)  # sync_done: its passes are fixed already
register(Sampler(FastDreamOptions, _run_fast_dream, frozenset({"sync_done"})))  # schedule mode only
register(Sampler(BlockDiffusionOptions, _run_blocks))
