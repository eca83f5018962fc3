"""Native Dream for transformers 5: config and bidirectional Qwen2-style transformer, weight-compatible with
the official checkpoints (Dream-v0-Base/Instruct-7B, DiffuCoder, Dream-Coder).

The parameter names follow the official `DreamModel` layout (`model.layers.{i}.self_attn.q_proj` ...), so those
checkpoints load with `from_pretrained` and no remote code, although their `config.json` names remote code in
`auto_map`. Dream's logits are shifted (position i-1 predicts token i): `DreamConfig.logits_shifted` tells
d1's samplers and losses so (`d1.diffusion.logits`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from d1.diffusion.dream_sampling import diffusion_generate
from d1.models.llada import (
    CacheSlots,
    KVCache,
    LLaDAOutput,
    LLaDARMSNorm,
    apply_rotary,
    cache_slots,
    merge_cache,
    rotary_cos_sin,
    slot_positions,
)


class DreamConfig(PretrainedConfig):
    """Dream's config fields (Qwen2's: `hidden_size`, `num_attention_heads`, ...), as in the official `config.json`."""

    model_type = "Dream"
    logits_shifted: ClassVar[bool] = True
    """The output at position i-1 predicts the token at position i (Dream keeps its AR parent's alignment)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    mask_token_id: int | None = None
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        """Fail early on Qwen2 options no released Dream checkpoint uses, instead of computing wrong logits."""
        unsupported = {
            "hidden_act": (self.hidden_act, "silu"),
            "rope_scaling": (self.rope_scaling, None),
            "use_sliding_window": (self.use_sliding_window, False),
            "tie_word_embeddings": (self.tie_word_embeddings, False),
        }
        for field, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"DreamConfig.{field}={value!r} is not supported by d1's native Dream (only {supported!r}, the "
                    "setting of every released Dream checkpoint). Load this checkpoint with trust_remote_code=True."
                )
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % heads or heads % kv_heads:
            raise ValueError(
                f"DreamConfig: hidden_size={self.hidden_size} must be divisible by num_attention_heads={heads}, "
                f"and num_attention_heads by num_key_value_heads={kv_heads}."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class DreamAttention(nn.Module):
    """Full (bidirectional) grouped-query attention with q/k/v biases and rotary embeddings."""

    def __init__(self, config: PretrainedConfig, qkv_bias: bool = True, out_bias: bool = False):
        super().__init__()
        d, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.n_heads, self.n_kv_heads, self.head_dim = heads, kv_heads, config.head_dim
        self.q_proj = nn.Linear(d, heads * config.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_heads * config.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_heads * config.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * config.head_dim, d, bias=out_bias)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, heads, L, head_dim] before the rotary embedding."""
        b, length, _ = h.shape
        q = self.q_proj(h).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        slots: CacheSlots | None,
        keep: slice | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention output (at the query positions `keep`, when given) and the keys/values attended to
        (`past` merged in at its `slots`)."""
        b, length, _ = h.shape
        q, k, v = self.project(h)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = merge_cache(past, k, v, slots)
        repeats = self.n_heads // self.n_kv_heads
        att = F.scaled_dot_product_attention(
            q, k.repeat_interleave(repeats, 1), v.repeat_interleave(repeats, 1), attn_mask=attn_mask
        )
        att = att.transpose(1, 2).reshape(b, length, -1)
        if keep is not None:
            att = att[:, keep].contiguous()
        return self.o_proj(att), (k, v)


class DreamMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm Qwen2 block without the causal mask."""

    attention_class: ClassVar[type[DreamAttention]] = DreamAttention
    """The attention module (SDAR's block adds q/k norms)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self.attention_class(config)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        slots: CacheSlots | None = None,
        keep: slice | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """New hidden states (only at `keep`, when given) and the keys/values attended to (`past` merged in)."""
        att, kv = self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, past, slots, keep)
        if keep is not None:
            x = x[:, keep]
        x = x + att
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    config: DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True


def attention_bias(
    attention_mask: Any, position_ids: torch.Tensor | None, cache_position: CacheSlots | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The SDPA mask and the position ids for Dream's accepted masks: None or "full" (Dream's sampler's "no
    padding"), a 2-D 0/1 key mask (positions cumsum - 1 unless given), or a 4-D mask [B, 1, Lq, Lk]
    (boolean: True attends; else additive). In a boolean mask every query also attends to its own key
    (its slot `cache_position`, else the last Lq keys), so a row with no key (a pad query) stays finite."""
    if attention_mask is None or isinstance(attention_mask, str):
        if attention_mask not in (None, "full"):
            raise ValueError(
                f"attention_mask={attention_mask!r}: the only string accepted is 'full' (no padding)."
            )
        return None, position_ids
    if attention_mask.dim() == 4:
        if attention_mask.dtype != torch.bool:
            return attention_mask, position_ids
        lq, lk = attention_mask.shape[-2:]
        keys = torch.arange(lk, device=attention_mask.device)
        own = keys[lk - lq :] if cache_position is None else slot_positions(cache_position, lq, keys.device)
        return attention_mask | (own[:, None] == keys), position_ids
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be [batch, length] (0/1) or [batch, 1, queries, keys], got shape "
            f"{tuple(attention_mask.shape)}."
        )
    real = attention_mask.bool()
    if position_ids is None:
        position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)
        if cache_position is not None:
            position_ids = position_ids[:, cache_position]
    return (None if real.all() else real[:, None, None, :]), position_ids


class DreamBaseModel(DreamPreTrainedModel):
    """The bare Dream transformer (official names: `embed_tokens`, `layers`, `norm`)."""

    layer_class: ClassVar[type[DreamDecoderLayer]] = DreamDecoderLayer
    """The block (SDAR's bare model reuses this one with its own block)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(self.layer_class(config) for _ in range(config.num_hidden_layers))
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Any = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_position: CacheSlots | None = None,
        keep: slice = slice(0, None),
    ) -> tuple[torch.Tensor, KVCache]:
        """Final hidden states (at `keep`) and the keys/values of every layer; see `DreamModel.forward`."""
        b, length = input_ids.shape
        slots = cache_position if cache is None else cache_slots(cache_position, cache[0][0].shape[2], length)
        attn_mask, position_ids = attention_bias(attention_mask, position_ids, slots)
        if position_ids is None:
            position_ids = slot_positions(slots, length, input_ids.device).expand(b, length)
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        last = len(self.layers) - 1
        new_cache = []
        for i, layer in enumerate(self.layers):
            past = cache[i] if cache is not None else None
            x, kv = layer(
                x,
                cos,
                sin,
                attn_mask,
                past,
                slots,
                keep if i == last and keep != slice(0, None) else None,
            )
            new_cache.append(kv)
        return self.norm(x), tuple(new_cache)


class DreamModel(DreamPreTrainedModel):
    """Dream with its output head (the official class name): `model(input_ids, attention_mask).logits` are the
    raw, unshifted logits of every position; `diffusion_generate` is Dream's own sampler."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBaseModel(config)
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
        cache_position: CacheSlots | None = None,
        logits_to_keep: int | slice = 0,
        **kwargs,
    ) -> LLaDAOutput:
        """Logits [B, L, vocab_size]. `attention_mask`: see `attention_bias`; with a 2-D mask, positions count
        only real tokens, so a left-padded row sees exactly the rotations it would see alone.

        With `cache`, `input_ids` sit at the cache slots `cache_position` (default: appended after the cache;
        a slice costs no host sync, a tensor one a forward: `llada.cache_slots`) and a 2-D `attention_mask` covers every key. `logits_to_keep` (int: the last N, 0 = all; or a slice
        of the input) limits the last layer's queries, MLP and head to those positions. `use_cache=True`
        returns the merged keys/values of every layer (the block KV cache of `d1.generate`)."""
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden, new_cache = self.model(input_ids, attention_mask, position_ids, cache, cache_position, keep)
        return LLaDAOutput(logits=self.lm_head(hidden), cache=new_cache if use_cache else None)

    def diffusion_generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Dream's public sampler, `d1.diffusion.dream_sampling.diffusion_generate` on this model."""
        return diffusion_generate(self, inputs, **kwargs)


AutoConfig.register("Dream", DreamConfig, exist_ok=True)
AutoModel.register(DreamConfig, DreamModel, exist_ok=True)
AutoModelForMaskedLM.register(DreamConfig, DreamModel, exist_ok=True)
