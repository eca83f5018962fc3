"""Native LLaDA for transformers 5: config and bidirectional transformer, weight-compatible with the official checkpoints.

The parameter names follow the official `LLaDAModelLM` layout (`model.transformer.blocks.{i}.q_proj` ...), so
`GSAI-ML/LLaDA-8B-Instruct`, LLaDA-8B-Base and LLaDA-1.5 load with `from_pretrained` and no remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per layer (keys, values), each [B, n_kv_heads, T, head_dim], keys already rotated: the block KV cache."""


@dataclass
class LLaDAOutput(ModelOutput):
    """Logits [B, L, embedding_size] and, with `use_cache=True`, the keys/values of every position attended to."""

    logits: torch.Tensor | None = None
    cache: KVCache | None = None


class LLaDAConfig(PretrainedConfig):
    """LLaDA's own config fields (`d_model`, `n_heads`, ...), as written in the official `config.json`."""

    model_type = "llada"

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None
    n_layers: int = 32
    mlp_hidden_size: int | None = None
    mlp_ratio: int = 4
    vocab_size: int = 126464
    embedding_size: int | None = None
    max_sequence_length: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    weight_tying: bool = False
    scale_logits: bool = False
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    include_bias: bool = False
    include_qkv_bias: bool = False
    rope: bool = True
    alibi: bool = False
    input_emb_norm: bool = False
    activation_type: str = "silu"
    mask_token_id: int | None = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.mlp_hidden_size is None:
            self.mlp_hidden_size = self.mlp_ratio * self.d_model
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        """Fail early on LLaDA/OLMo options this implementation does not cover, instead of computing wrong logits."""
        unsupported = {
            "block_type": (self.block_type, "llama"),
            "layer_norm_type": (self.layer_norm_type, "rms"),
            "activation_type": (self.activation_type, "silu"),
            "include_bias": (self.include_bias, False),
            "include_qkv_bias": (self.include_qkv_bias, False),
            "rope": (self.rope, True),
            "alibi": (self.alibi, False),
            "input_emb_norm": (self.input_emb_norm, False),
        }
        for field, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"LLaDAConfig.{field}={value!r} is not supported by d1's native LLaDA (only {supported!r}, the "
                    "setting of every released LLaDA checkpoint). Load this checkpoint with trust_remote_code=True."
                )
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LLaDAConfig: d_model={self.d_model} must be divisible by n_heads={self.n_heads}, and n_heads by "
                f"n_kv_heads={self.n_kv_heads}."
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class LLaDARMSNorm(nn.Module):
    """RMSNorm computed in float32, then scaled by a learned weight (LLaDA's `RMSLayerNorm`)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, 1, L, head_dim] in float32 for the rotate-half rotary embedding."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float) / head_dim)
    )
    freqs = position_ids.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, L, D] queries or keys in float32 (LLaDA's `rope_full_precision`)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """Pre-norm block: full bidirectional attention with rotary embeddings, then a SwiGLU MLP."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, kv = config.d_model, config.n_kv_heads * config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)

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
        """New hidden states (only at the positions `keep`, when given) and the keys/values attended to
        (`past` merged in at its `slots`). Attention runs for every query either way, so kept positions match the full forward (bit-identical on one thread)."""
        b, length, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = merge_cache(past, k, v, slots)
        att = F.scaled_dot_product_attention(q, *self._repeat_kv(k, v), attn_mask=attn_mask, is_causal=False)
        att = att.transpose(1, 2).reshape(b, length, -1)
        if keep is not None:
            x, att = x[:, keep], att[:, keep].contiguous()
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)), (k, v)

    def _repeat_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values expanded from `n_kv_heads` to `n_heads` (grouped-query attention)."""
        if self.n_kv_heads == self.n_heads:
            return k, v
        repeats = self.n_heads // self.n_kv_heads
        return k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)


CacheSlots = slice | torch.Tensor
"""Where a cached forward's inputs sit in the cache: consecutive slots as a slice (nothing to read from the
device), or an index tensor of scattered slots."""


def cache_slots(cache_position: CacheSlots | None, past_length: int, length: int) -> CacheSlots:
    """The cache slots of a cached forward's `length` inputs, resolved once per forward instead of in every
    layer: appended after the `past_length` cached ones when None; a slice as given (no host sync); a tensor
    is read once (one host sync) and becomes a slice when its slots are consecutive. The slots must start at
    the cache length (append) or lie inside the cache (replace)."""
    if cache_position is None:
        return slice(past_length, past_length + length)
    if isinstance(cache_position, slice):
        positions = range(cache_position.start, cache_position.stop)
    else:
        positions = cache_position.tolist()
    if len(positions) != length:
        raise ValueError(
            f"cache_position covers {len(positions)} slots but the input has {length} tokens; give one slot "
            "per input token."
        )
    if positions[0] == past_length:
        return slice(past_length, past_length + length)
    if max(positions) >= past_length:
        raise ValueError(
            f"cache_position {list(positions)} must either start at the cache length {past_length} (append) "
            "or lie inside the cache (replace)."
        )
    if list(positions) == list(range(positions[0], positions[0] + length)):
        return slice(positions[0], positions[0] + length)
    return cache_position


def slot_positions(slots: CacheSlots | None, length: int, device: torch.device) -> torch.Tensor:
    """The position index of each of `length` inputs: their cache `slots`, or 0..length-1 without a cache."""
    if slots is None:
        return torch.arange(length, device=device)
    if isinstance(slots, slice):
        return torch.arange(slots.start, slots.stop, device=device)
    return slots


def merge_cache(
    past: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor, slots: CacheSlots
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached keys/values with the new ones appended (`slots` start at the cache length) or written over
    the cached `slots` (dual cache: the current block replaced). A tensor of slots is resolved here by
    `cache_slots` (one host sync a call); forwards resolve theirs once and pass a slice."""
    past_k, past_v = past
    if isinstance(slots, torch.Tensor):
        slots = cache_slots(slots, past_k.shape[2], k.shape[2])
    if not isinstance(slots, slice):
        return past_k.index_copy(2, slots, k), past_v.index_copy(2, slots, v)
    if slots.start == past_k.shape[2]:
        return torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    return (
        past_k.slice_scatter(k, 2, slots.start, slots.stop),
        past_v.slice_scatter(v, 2, slots.start, slots.stop),
    )


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True


class LLaDAModel(LLaDAPreTrainedModel):
    """The bare LLaDA transformer; the official layout keeps every module under `transformer`."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        modules = {
            "wte": nn.Embedding(config.embedding_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self.transformer = nn.ModuleDict(modules)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        cache_position: CacheSlots | None = None,
        logits_to_keep: int | slice = 0,
    ) -> LLaDAOutput:
        """Logits [B, L, embedding_size]. Padding keys are hidden through `attention_mask`; positions count
        only real tokens, so a left-padded row sees exactly the rotations it would see alone.

        With `cache`, `input_ids` sit at the cache slots `cache_position` (default: appended after
        the cache; a slice costs no host sync, a tensor one a forward, see `cache_slots`) and `attention_mask`, when given, covers every key (cache and input). `logits_to_keep`
        (int: the last N, 0 = all; or a slice of the input) also limits the last block's queries and MLP
        to those positions. `use_cache=True` returns the merged keys/values of every layer.
        """
        b, length = input_ids.shape
        slots = cache_position if cache is None else cache_slots(cache_position, cache[0][0].shape[2], length)
        attn_mask = None
        if attention_mask is not None:
            real = attention_mask.bool()
            if position_ids is None:
                position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)
                if slots is not None:
                    position_ids = position_ids[:, slots]
            if not real.all():
                attn_mask = real[:, None, None, :]
        if position_ids is None:
            position_ids = slot_positions(slots, length, input_ids.device).expand(b, length)
        x = self.transformer.wte(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        last = len(self.transformer.blocks) - 1
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        new_cache = []
        for i, block in enumerate(self.transformer.blocks):
            past = cache[i] if cache is not None else None
            x, kv = block(
                x,
                cos,
                sin,
                attn_mask,
                past,
                slots,
                keep if i == last and keep != slice(0, None) else None,
            )
            new_cache.append(kv)
        x = self.transformer.ln_f(x)
        head = self.transformer.wte.weight if self.config.weight_tying else self.transformer.ff_out.weight
        logits = F.linear(x, head)
        if self.config.scale_logits:
            logits = logits * (1.0 / math.sqrt(self.config.d_model))
        return LLaDAOutput(logits=logits, cache=tuple(new_cache) if use_cache else None)


class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA with its output head: `model(input_ids, attention_mask).logits` scores every position at once."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        cache_position: CacheSlots | None = None,
        logits_to_keep: int | slice = 0,
        **kwargs,
    ) -> LLaDAOutput:
        """`LLaDAModel.forward`: logits, and with `use_cache=True` the block KV cache."""
        return self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            cache_position=cache_position,
            logits_to_keep=logits_to_keep,
        )


AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
