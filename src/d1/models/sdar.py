"""Native SDAR for transformers 5: config and Qwen3-style transformer, weight-compatible with the official
checkpoints (JetLM/SDAR-1.7B-Chat, SDAR-4B-Chat, SDAR-8B-Chat).

SDAR is a block-diffusion LM: a Qwen3 body (per-head RMSNorm on queries and keys, grouped-query attention,
rotary embeddings) trained to denoise one block of tokens at a time, attending block-causally (every token
sees its own block and the blocks before it, on a grid of `block_size` from position 0, prompt included).
The parameter names follow the official `SDARForCausalLM` (`model.layers.{i}.self_attn.q_norm` ...), so those
checkpoints load with `from_pretrained` and no remote code, although their `config.json` names remote code in
`auto_map`. The logits are not shifted: the output at position i predicts the token at i.

Where this differs from the official modeling code (JetAstra/SDAR `training/model/*/modeling_sdar.py`):
- the official model builds no mask of its own and fails without one; here no mask is full bidirectional
  attention, as for LLaDA and Dream, so the caller passes the block-causal mask (`block_causal_mask`) or
  decodes the last block over a cache of the blocks before it (which needs no mask);
- the cache is d1's `KVCache` (returned with `use_cache=True`, merged by `d1.models.llada.merge_cache`)
  instead of the official `DynamicCache` with its `store_kv` switch;
- the official training forward (two-stream noisy/clean sequences with flex attention and a fused loss)
  is not reproduced: d1's trainers compute their own losses from the logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

from d1.models.dream import DreamAttention, DreamBaseModel, DreamDecoderLayer
from d1.models.llada import KVCache, LLaDAOutput, LLaDARMSNorm


class SDARConfig(PretrainedConfig):
    """SDAR's config fields (Qwen3's, plus `block_size` and `mask_token_id`) under the official names; the
    defaults are SDAR-1.7B-Chat's shape."""

    model_type = "sdar"
    logits_shifted: ClassVar[bool] = False
    """The output at position i predicts the token at position i."""
    block_diffusion: ClassVar[bool] = True
    """Decoded block by block under block-causal attention (`d1.diffusion.block_diffusion`)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = True
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    block_size: int = 4
    """The block length the model was trained with (the official sampler's default `block_length`)."""
    mask_token_id: int | None = 151669
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        kwargs.pop("attn_implementation", None)  # released configs name flex_attention; d1 always uses SDPA
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        """Fail early on Qwen3 options no released SDAR checkpoint uses, instead of computing wrong logits."""
        unsupported = {
            "hidden_act": (self.hidden_act, "silu"),
            "rope_scaling": (self.rope_scaling, None),
            "use_sliding_window": (self.use_sliding_window, False),
        }
        for field, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"SDARConfig.{field}={value!r} is not supported by d1's native SDAR (only {supported!r}, the "
                    "setting of every released SDAR checkpoint). Load this checkpoint with trust_remote_code=True."
                )
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if heads % kv_heads:
            raise ValueError(
                f"SDARConfig: num_attention_heads={heads} must be divisible by num_key_value_heads={kv_heads}."
            )
        if self.block_size < 1:
            raise ValueError(f"SDARConfig.block_size={self.block_size} must be at least 1.")


def block_causal_mask(length: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """SDAR's attention mask [1, 1, L, L] (True = attend): query i sees key j when j's block (j // block_size)
    is not after i's; the grid starts at position 0 (the prompt is cut into blocks too)."""
    blocks = torch.arange(length, device=device) // block_size
    return (blocks[:, None] >= blocks[None, :])[None, None]


class SDARAttention(DreamAttention):
    """Grouped-query attention with Qwen3's per-head RMSNorm on queries and keys (before the rotation)."""

    def __init__(self, config: SDARConfig):
        super().__init__(config, qkv_bias=config.attention_bias, out_bias=config.attention_bias)
        self.q_norm = LLaDARMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = LLaDARMSNorm(config.head_dim, config.rms_norm_eps)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised queries and keys, and values, [B, heads, L, head_dim] before the rotary embedding."""
        q, k, v = super().project(h)
        return self.q_norm(q), self.k_norm(k), v


class SDARDecoderLayer(DreamDecoderLayer):
    """Dream's pre-norm block (official names `input_layernorm`, `self_attn`, `post_attention_layernorm`,
    `mlp`) with SDAR's attention."""

    attention_class = SDARAttention


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    config: SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDARDecoderLayer"]
    _supports_sdpa = True


class SDARModel(DreamBaseModel):
    """The bare SDAR transformer (official names: `embed_tokens`, `layers`, `norm`); the forward is Dream's
    (`DreamBaseModel.forward`: masks through `d1.models.dream.attention_bias`)."""

    config_class = SDARConfig
    config: SDARConfig
    _no_split_modules = ["SDARDecoderLayer"]
    layer_class = SDARDecoderLayer


class SDARForCausalLM(SDARPreTrainedModel):
    """SDAR with its output head (the official class name): `model(input_ids, attention_mask).logits` are the
    unshifted logits of every position."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.model = SDARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Any = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        cache_position: torch.Tensor | None = None,
        logits_to_keep: int | slice = 0,
        **kwargs,
    ) -> LLaDAOutput:
        """Logits [B, L, vocab_size]. `attention_mask`: None = full bidirectional attention (the official
        model needs a mask; pass `block_causal_mask` for its block-causal attention); a 4-D boolean
        [B, 1, Lq, Lk] (True attends; every query also attends to its own key) or additive float mask; a 2-D
        0/1 key mask (bidirectional, padding hidden; positions count only real tokens unless given).

        With `cache`, `input_ids` sit at the cache slots `cache_position` (default: appended after the cache)
        and a mask covers every key (cache and input): the next block over a cache of finished blocks needs
        none. `logits_to_keep` (int: the last N, 0 = all; or a slice of the input) limits the last layer's
        queries, MLP and head to those positions. `use_cache=True` returns the merged keys/values of every
        layer (the official `store_kv=True`: append a finished block's keys to the cache)."""
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden, new_cache = self.model(input_ids, attention_mask, position_ids, cache, cache_position, keep)
        return LLaDAOutput(logits=self.lm_head(hidden), cache=new_cache if use_cache else None)


AutoConfig.register("sdar", SDARConfig, exist_ok=True)
AutoModel.register(SDARConfig, SDARForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)
