"""Model families: everything that differs between LLaDA and Dream (and the next families) in one table.

The logit alignment is a property of the model's config (`logits_shifted`, read by `d1.diffusion.logits`), so
the diffusion maths never imports this module. Adding a family: one model file (config + model, registered with
the Auto classes), one `Family` entry below, and its tests (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from d1.models.dream import DreamConfig, DreamModel
from d1.models.llada import LLaDAConfig, LLaDAModelLM
from d1.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM
from d1.models.sdar import SDARConfig, SDARForCausalLM


@dataclass(frozen=True)
class TinyTokenizer:
    """The special tokens and chat template of a family's offline character tokenizer (`models/presets.py`)."""

    bos: str
    eos: str
    pad: str
    mask: str
    unk: str
    chat_tokens: tuple[str, ...]
    chat_template: str


@dataclass(frozen=True)
class Family:
    """One architecture family: its classes, real checkpoints' mask token, LoRA targets and
    the toy sizes and tokenizer of `d1 init-model --family NAME`."""

    name: str
    model_type: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    mask_token: str
    mask_token_id: int
    lora_targets: tuple[str, ...]
    """`d1 grpo`'s default LoRA targets: every projection inside the blocks, not the output head."""
    tokenizer: TinyTokenizer
    attention_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """`d1 sft`'s default LoRA targets: the query/key/value projections (d1's SFT adapts q, k and v)."""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    example: str = ""
    sampler: str = "llada"
    """The sampler every command uses unless told otherwise (a name of `d1.diffusion.samplers.SAMPLERS`). Dream's
    is LLaDA's block sampler too: Fast-dLLM's cached Dream sampler ties with it in cells on the demo's Dream
    and is slower (docs/performance.md)."""
    sampler_defaults: dict[str, Any] = field(default_factory=dict)
    """Options of `sampler` that differ from the registry's defaults for this family (the settings its reports
    evaluate with); a command's own setting wins."""

    @property
    def logits_shifted(self) -> bool:
        """Whether the output at i-1 predicts token i (set on the config class, read by the diffusion code)."""
        return bool(getattr(self.config_class, "logits_shifted", False))

    def tiny_config(self, preset: str, **special_ids: int) -> PretrainedConfig:
        """The config of a toy-sized model (`preset`: tiny or small) with the tokenizer's ids and vocabulary."""
        if preset not in self.presets:
            raise ValueError(f"--preset {preset!r} is unknown; choose one of {sorted(self.presets)}.")
        return self.config_class(**self.presets[preset], **special_ids)


LLADA_CHAT = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""LLaDA-8B-Instruct's chat format, so prompts built for the tiny model look like the real ones."""

QWEN2_CHAT = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen2's chat format (Dream's), without Qwen2's default system prompt, which tiny models need not spell."""

LLADA2_CHAT = (
    "{% for message in messages %}"
    "{{ '<role>' + ('HUMAN' if message['role'] == 'user' else message['role'] | upper) + '</role>' "
    "+ message['content'] | trim + '<|role_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)
"""LLaDA 2.x's chat format (Ling's: `<role>HUMAN</role>...<|role_end|><role>ASSISTANT</role>`), without the
official template's default system turn."""

LLADA_TOY = {"max_sequence_length": 4096, "rope_theta": 10000.0}
DREAM_TOY = {"max_position_embeddings": 4096}
SDAR_TOY = {"max_position_embeddings": 4096, "block_size": 4, "rope_theta": 10000.0, "tie_word_embeddings": False}
LLADA2_TOY = {"max_position_embeddings": 4096, "rope_theta": 10000.0, "first_k_dense_replace": 1, "num_shared_experts": 1}

FAMILIES: dict[str, Family] = {
    "llada": Family(
        name="llada",
        model_type="llada",
        config_class=LLaDAConfig,
        model_class=LLaDAModelLM,
        mask_token="<|mdm_mask|>",
        mask_token_id=126336,
        # attention q/k/v and output (attn_out), MLP gate (ff_proj), up (up_proj) and down (the blocks' ff_out,
        # as a full-name pattern: the head model.transformer.ff_out is used as a raw weight and never trains).
        # d1's RL list was q/k/v/o/gate/up/down_proj; LLaDA has no o_proj, gate_proj or down_proj, so d1 adapted
        # q_proj, k_proj, v_proj and up_proj only (--lora_target_modules q_proj k_proj v_proj up_proj).
        lora_targets=(
            "q_proj",
            "k_proj",
            "v_proj",
            "attn_out",
            "ff_proj",
            "up_proj",
            r".*\.blocks\.\d+\.ff_out",
        ),
        tokenizer=TinyTokenizer(
            bos="<|startoftext|>",
            eos="<|endoftext|>",
            pad="<|pad|>",
            mask="<|mdm_mask|>",
            unk="<|unk|>",
            chat_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            chat_template=LLADA_CHAT,
        ),
        presets={
            "tiny": {
                "d_model": 64,
                "n_heads": 4,
                "n_kv_heads": 4,
                "n_layers": 2,
                "mlp_hidden_size": 192,
                **LLADA_TOY,
            },
            "small": {
                "d_model": 128,
                "n_heads": 4,
                "n_kv_heads": 4,
                "n_layers": 4,
                "mlp_hidden_size": 384,
                **LLADA_TOY,
            },
        },
        example="GSAI-ML/LLaDA-8B-Instruct",
    ),
    "dream": Family(
        name="dream",
        model_type="Dream",
        config_class=DreamConfig,
        model_class=DreamModel,
        mask_token="<|mask|>",
        mask_token_id=151666,
        lora_targets=(
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ),  # d1's list
        tokenizer=TinyTokenizer(
            bos="<|beginoftext|>",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            mask="<|mask|>",
            unk="<|unk|>",
            chat_tokens=("<|im_start|>", "<|im_end|>"),
            chat_template=QWEN2_CHAT,
        ),
        presets={
            "tiny": {
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_hidden_layers": 2,
                "intermediate_size": 192,
                **DREAM_TOY,
            },
            "small": {
                "hidden_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_hidden_layers": 4,
                "intermediate_size": 384,
                **DREAM_TOY,
            },
        },  # fmt: skip
        example="Dream-org/Dream-v0-Instruct-7B",
    ),
    "llada2": Family(
        name="llada2",
        model_type="llada2_moe",
        config_class=LLaDA2MoeConfig,
        model_class=LLaDA2MoeModelLM,
        mask_token="<|mask|>",
        mask_token_id=156895,
        # fused q/k/v and the attention output; the SwiGLU projections of the dense MLP, the shared expert and
        # every routed expert (the router, `mlp.gate`, stays frozen)
        lora_targets=("query_key_value", "dense", "gate_proj", "up_proj", "down_proj"),
        attention_targets=("query_key_value",),
        tokenizer=TinyTokenizer(
            bos="<|startoftext|>",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            mask="<|mask|>",
            unk="<|unk|>",
            chat_tokens=("<role>", "</role>", "<|role_end|>"),
            chat_template=LLADA2_CHAT,
        ),
        presets={
            "tiny": {
                "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                "num_hidden_layers": 2, "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 8,
                "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, **LLADA2_TOY,
            },
            "small": {
                "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                "num_hidden_layers": 4, "intermediate_size": 256, "moe_intermediate_size": 64, "num_experts": 16,
                "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, **LLADA2_TOY,
            },
        },  # fmt: skip
        example="inclusionAI/LLaDA2.0-mini",
        sampler="block_diffusion",
        sampler_defaults={"unmask": "threshold", "threshold": 0.95},
    ),
    "sdar": Family(
        name="sdar",
        model_type="sdar",
        config_class=SDARConfig,
        model_class=SDARForCausalLM,
        mask_token="<|MASK|>",
        mask_token_id=151669,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        tokenizer=TinyTokenizer(
            bos="<|beginoftext|>",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            mask="<|MASK|>",
            unk="<|unk|>",
            chat_tokens=("<|im_start|>", "<|im_end|>"),
            chat_template=QWEN2_CHAT,
        ),
        presets={
            "tiny": {
                "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                "num_hidden_layers": 2, "intermediate_size": 192, **SDAR_TOY,
            },
            "small": {
                "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                "num_hidden_layers": 4, "intermediate_size": 384, **SDAR_TOY,
            },
        },  # fmt: skip
        example="JetLM/SDAR-1.7B-Chat",
        sampler="block_diffusion",
        # SDAR's blocks of 4 and its generate.py's dynamic threshold
        sampler_defaults={"block_length": 4, "unmask": "threshold", "threshold": 0.85},
    ),
}
"""Every family d1 runs natively, by name."""


def family(name: str) -> Family:
    """The family called `name`; a clear error listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"--family {name!r} is unknown; choose one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def family_of(config: Any) -> Family | None:
    """The family of a loaded config (by `model_type`), None for models d1 has no native code for."""
    model_type = getattr(config, "model_type", None)
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def default_sampler(config: Any) -> tuple[str, dict[str, Any]]:
    """The sampler of a loaded config's family and its option defaults; LLaDA's block sampler for models d1
    has no native code for."""
    found = family_of(config)
    return (found.sampler, found.sampler_defaults) if found is not None else ("llada", {})


def unknown_model_type_error(name_or_path: str, model_type: str | None) -> ValueError:
    """The error for a checkpoint whose `model_type` no family knows: the known ones, and the remote-code way."""
    known = ", ".join(f"{f.name} (model_type {f.model_type!r}, e.g. {f.example})" for f in FAMILIES.values())
    return ValueError(
        f"{name_or_path}: model_type={model_type!r} has no native implementation in d1; known families: {known}. "
        "To run a model with its own code, pass --trust_remote_code (trust_remote_code=True); its forward must "
        "take (input_ids, attention_mask) and return .logits."
    )
