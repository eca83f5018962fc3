"""Native LLaDA 2.x (the MoE block-diffusion models: LLaDA2.0-mini/flash, LLaDA2.1) for transformers 5: config
and transformer, weight-compatible with the official checkpoints (`model_type` "llada2_moe").

The parameter names follow the official `LLaDA2MoeModelLM` (inclusionAI/dFactory `models/llada2_moe/`, the
same file as the Hub's remote code), so the Hub checkpoints load with `from_pretrained` and no remote code.
A layer: fused `attention.query_key_value`, per-head RMSNorm of queries and keys, partial rotary embeddings
(the first `head_dim * partial_rotary_factor` dims, rotate-half pairing), `attention.dense`; then a dense
SwiGLU `mlp` in the first `first_k_dense_replace` layers, else a mixture of experts: `mlp.gate` (sigmoid
router with a learned `expert_bias`, group-limited top-k), `mlp.experts.{e}` (routed SwiGLU experts) and
`mlp.shared_experts`.

Attention is bidirectional unless a mask says otherwise; generation uses a block-causal 4-D mask, under which
the keys/values of finished blocks are exact to cache (`cache`, `use_cache`). The official code turns a 2-D
padding mask into a CAUSAL mask (transformers' `_prepare_4d_causal_attention_mask_for_sdpa`) and its eager
attention is causal even without a mask: a trap. Here a 2-D mask only hides padding keys; attention stays
bidirectional.

The routed experts run as a loop over experts on the tokens routed to each (gathered once, sorted by expert):
on CPU it beat `torch.bmm` over padded per-expert groups in every cell of `benchmarks/moe.py` (1 thread, 64
and 256 experts, 32-2048 tokens, forward and backward: bmm 1.0-3.5x slower with the weights pre-stacked,
1.6-9.5x with the stacking); a GPU would use a grouped-GEMM kernel.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from d1.models.dream import attention_bias
from d1.models.llada import (
    CacheSlots,
    KVCache,
    LLaDAOutput,
    LLaDARMSNorm,
    cache_slots,
    merge_cache,
    rotary_cos_sin,
    slot_positions,
)

FUSED_EXPERTS_HELP = (
    "dFactory's training layout (model_type 'llada2_moe_veomni') keeps each layer's routed experts fused as "
    "mlp.experts.{gate,up,down}_proj [num_experts, out, in]; d1 splits them when loading a local folder "
    "(convert_fused_experts): download it first (hf download NAME --local-dir DIR), or run dFactory's "
    "`python scripts/moe_convertor.py -i IN -o OUT -m split` and set model_type 'llada2_moe' in "
    "OUT/config.json."
)


class LLaDA2MoeConfig(PretrainedConfig):
    """LLaDA 2.x's config fields (official names), defaulting to LLaDA2.0-mini's `config.json`.

    `norm_topk_prob`, `score_function`, `router_dtype` and `moe_router_enable_expert_bias` are kept as the
    official checkpoints write them; the official code (and this one) always normalises the chosen experts'
    sigmoid scores, routes in float32 and adds `expert_bias`. `mask_token_id`/`eos_token_id` default to the
    official `generate`'s `mask_id`/`eos_id`."""

    model_type = "llada2_moe"
    logits_shifted: ClassVar[bool] = False
    """The output at position i predicts the token at position i (LLaDA's alignment)."""
    block_diffusion: ClassVar[bool] = True
    """Decoded block by block under block-causal attention (`d1.diffusion.block_diffusion`)."""

    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = 128
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = False
    rms_norm_eps: float = 1e-6
    norm_head: bool = False
    tie_word_embeddings: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    output_dropout: float = 0.0
    initializer_range: float = 0.02
    max_position_embeddings: int = 32768
    rope_theta: float = 600000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    rotary_dim: int | None = None
    use_cache: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    num_experts: int = 256
    num_shared_experts: int | None = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int = 512
    first_k_dense_replace: int = 1
    norm_topk_prob: bool = True
    score_function: str = "sigmoid"
    router_dtype: str = "fp32"
    moe_router_enable_expert_bias: bool = True
    output_router_logits: bool = False
    mask_token_id: int | None = 156895
    pad_token_id: int | None = 156892
    eos_token_id: int | None = 156892

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        """Fail early on options no released LLaDA 2.x checkpoint uses (nor the official code implements)
        and on inconsistent router sizes, instead of computing wrong logits."""
        unsupported = {
            "hidden_act": (self.hidden_act, "silu"),
            "rope_scaling": (self.rope_scaling, None),
            "norm_head": (self.norm_head, False),
            "tie_word_embeddings": (self.tie_word_embeddings, False),
            "score_function": (self.score_function, "sigmoid"),
        }
        for field, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"LLaDA2MoeConfig.{field}={value!r} is not supported by d1's native LLaDA 2.x (only "
                    f"{supported!r}, the setting of every released checkpoint). Load this checkpoint with "
                    "trust_remote_code=True."
                )
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if heads % kv_heads:
            raise ValueError(
                f"LLaDA2MoeConfig: num_attention_heads={heads} must be divisible by "
                f"num_key_value_heads={kv_heads}."
            )
        if self.num_experts % self.n_group or self.num_experts // self.n_group < 2:
            raise ValueError(
                f"LLaDA2MoeConfig: num_experts={self.num_experts} must split into n_group={self.n_group} "
                "equal groups of at least 2 experts (each group is scored by its top-2 experts)."
            )
        reachable = self.topk_group * (self.num_experts // self.n_group)
        if not 1 <= self.topk_group <= self.n_group or not 1 <= self.num_experts_per_tok <= reachable:
            raise ValueError(
                f"LLaDA2MoeConfig: topk_group={self.topk_group} must lie in 1..n_group={self.n_group} and "
                f"num_experts_per_tok={self.num_experts_per_tok} in 1..{reachable} (the experts of the kept "
                "groups)."
            )

    @property
    def rope_dim(self) -> int:
        """How many leading dims of each head rotate: `head_dim * partial_rotary_factor`, as the official."""
        return int(self.head_dim * self.partial_rotary_factor)


class LLaDA2MoeVeomniConfig(LLaDA2MoeConfig):
    """dFactory's training layout (fused routed experts): the same model, its experts split on load
    (`FUSED_EXPERTS_HELP`)."""

    model_type = "llada2_moe_veomni"


@dataclass
class LLaDA2Output(LLaDAOutput):
    """`LLaDAOutput` plus, with `output_router_logits=True`, each MoE layer's router logits
    [B, L, num_experts]."""

    router_logits: tuple[torch.Tensor, ...] | None = None


def rotate_partial(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of [B, H, L, D] queries or keys (rotate-half pairing within
    them); the other dims pass through. In the input's dtype with cos/sin cast to it, as the official (in
    bfloat16 a float32 rotation moves scores enough to flip router choices)."""
    dim = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    first, second = rot.chunk(2, dim=-1)
    return torch.cat((rot * cos + torch.cat((-second, first), dim=-1) * sin, rest), dim=-1)


class LLaDA2MoeAttention(nn.Module):
    """Grouped-query attention: fused q/k/v projection, per-head q/k RMSNorm, partial rotary, SDPA."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        cache_position: CacheSlots | None,
        keep: slice | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention output (at the query positions `keep`, when given) and the keys/values attended to."""
        b, length, _ = h.shape
        qkv = self.query_key_value(h).view(b, length, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if hasattr(self, "query_layernorm"):
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = rotate_partial(q, cos, sin), rotate_partial(k, cos, sin)
        if past is not None:
            k, v = merge_cache(past, k, v, cache_position)
        repeats = self.n_heads // self.n_kv_heads
        att = F.scaled_dot_product_attention(
            q, k.repeat_interleave(repeats, 1), v.repeat_interleave(repeats, 1), attn_mask=attn_mask
        )
        att = att.transpose(1, 2).reshape(b, length, -1)
        if keep is not None:
            att = att[:, keep].contiguous()
        return self.dense(att), (k, v)


class LLaDA2MoeMLP(nn.Module):
    """SwiGLU feed-forward, down(silu(gate(x)) * up(x)): dense layers, each routed expert, the shared one."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(
    logits: torch.Tensor, expert_bias: torch.Tensor, n_group: int, topk_group: int, top_k: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official router on float32 logits [T, E]: the chosen experts [T, top_k] (by sigmoid score + bias,
    among the experts of the `topk_group` groups whose two best biased scores sum highest) and their weights:
    the unbiased scores, normalised over the chosen (when top_k > 1), times `scale`."""
    scores = torch.sigmoid(logits)
    biased = scores + expert_bias
    tokens = biased.shape[0]
    group_scores = biased.view(tokens, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    groups = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    kept = torch.zeros_like(group_scores).scatter_(1, groups, 1).bool()
    kept = kept.unsqueeze(-1).expand(tokens, n_group, biased.shape[1] // n_group).reshape(tokens, -1)
    chosen = torch.topk(biased.masked_fill(~kept, float("-inf")), k=top_k, dim=-1)[1]
    weights = scores.gather(1, chosen)
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return chosen, weights * scale


class LLaDA2MoeGate(nn.Module):
    """The router: float32 logits `weight @ x` whatever the model's dtype (as the official), then `route`."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.top_k, self.scale = config.num_experts_per_tok, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chosen experts [T, k], their float32 weights [T, k] and router logits [T, E] of tokens [T, H]."""
        logits = F.linear(x.float(), self.weight.float())
        groups = self.n_group, self.topk_group
        chosen, weights = route(logits, self.expert_bias, *groups, self.top_k, self.scale)
        return chosen, weights, logits


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts (`experts.{e}`) weighted by the router (`gate`) plus the unweighted `shared_experts`."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.gate = LLaDA2MoeGate(config)
        self.experts = nn.ModuleList(
            LLaDA2MoeMLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        if config.num_shared_experts:
            shared_size = config.moe_intermediate_size * config.num_shared_experts
            self.shared_experts = LLaDA2MoeMLP(config.hidden_size, shared_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output for hidden states [B, L, H] and the router logits [B, L, E]."""
        tokens = x.reshape(-1, x.shape[-1])
        chosen, weights, logits = self.gate(tokens)
        y = self.routed(tokens, chosen, weights).view_as(x)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(x)
        return y, logits.view(*x.shape[:-1], -1)

    def routed(self, tokens: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum over each token's chosen experts of weight * expert(token): tokens sorted by expert once, each
        expert run on its contiguous slice, outputs put back in (token, slot) order, combined in float32
        (the official order of operations)."""
        top_k = chosen.shape[1]
        flat = chosen.reshape(-1)
        order = flat.argsort(stable=True)
        grouped = tokens.index_select(0, order // top_k)
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        parts = grouped.split(counts)
        outputs = [self.experts[e](part) for e, part in enumerate(parts) if counts[e] > 0]
        slots = torch.cat(outputs).index_select(0, order.argsort())
        combined = (slots.view(*chosen.shape, -1).to(weights.dtype) * weights.unsqueeze(-1)).sum(dim=1)
        return combined.to(tokens.dtype)


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: attention, then the dense MLP (first `first_k_dense_replace` layers) or the MoE."""

    def __init__(self, config: LLaDA2MoeConfig, index: int):
        super().__init__()
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = LLaDA2MoeAttention(config)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        if index < config.first_k_dense_replace:
            self.mlp = LLaDA2MoeMLP(config.hidden_size, config.intermediate_size)
        else:
            self.mlp = LLaDA2MoeSparseMoeBlock(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_position: CacheSlots | None = None,
        keep: slice | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """New hidden states (only at `keep`, when given), the keys/values attended to (`past` merged in)
        and the router logits (None in a dense layer)."""
        att, kv = self.attention(self.input_layernorm(x), cos, sin, attn_mask, past, cache_position, keep)
        if keep is not None:
            x = x[:, keep]
        x = x + att
        out = self.mlp(self.post_attention_layernorm(x))
        out, router_logits = out if isinstance(out, tuple) else (out, None)
        return x + out, kv, router_logits


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    config: LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, plus the router (normal weights, zero expert bias)."""
        super()._init_weights(module)
        if isinstance(module, LLaDA2MoeGate):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.expert_bias)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """The bare transformer (official names: `word_embeddings`, `layers`, `norm`)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Any = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_position: CacheSlots | None = None,
        keep: slice = slice(0, None),
    ) -> tuple[torch.Tensor, KVCache, tuple[torch.Tensor, ...]]:
        """Final hidden states (at `keep`), every layer's keys/values and the MoE layers' router logits;
        see `LLaDA2MoeModelLM.forward`."""
        b, length = input_ids.shape
        slots = cache_position if cache is None else cache_slots(cache_position, cache[0][0].shape[2], length)
        attn_mask, position_ids = attention_bias(attention_mask, position_ids, slots)
        if position_ids is None:
            position_ids = slot_positions(slots, length, input_ids.device).expand(b, length)
        x = self.word_embeddings(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.rope_dim, self.config.rope_theta)
        last = len(self.layers) - 1
        new_cache, router_logits = [], []
        for i, layer in enumerate(self.layers):
            past = cache[i] if cache is not None else None
            layer_keep = keep if i == last and keep != slice(0, None) else None
            x, kv, logits = layer(x, cos, sin, attn_mask, past, slots, layer_keep)
            new_cache.append(kv)
            if logits is not None:
                router_logits.append(logits)
        return self.norm(x), tuple(new_cache), tuple(router_logits)


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """LLaDA 2.x with its output head (the official class name): `model(input_ids, attention_mask).logits`
    are the unshifted logits of every position."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Any = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        cache_position: CacheSlots | None = None,
        logits_to_keep: int | slice = 0,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> LLaDA2Output:
        """Logits [B, L, vocab_size] in the model's dtype (the official casts them to float32).

        `attention_mask` (see `d1.models.dream.attention_bias`): None = bidirectional (as the official with
        SDPA); a 4-D boolean [B, 1, Lq, Lk], True = attend (a query row with no key attends to itself, so it
        stays finite), e.g. the block-causal mask of generation; a 4-D float mask, added to the scores; a
        2-D 0/1 key mask: padding keys hidden, attention still bidirectional (the official code makes it
        causal), positions cumsum - 1 so a left-padded row sees the rotations it would see alone.

        With `cache`, `input_ids` sit at the cache slots `cache_position` (default: appended after the
        cache) and a 2-D mask covers every key. `logits_to_keep` (int: the last N, 0 = all; or a slice of
        the input) limits the last layer's queries, MLP and head to those positions. `use_cache=True`
        returns the merged keys/values of every layer; `output_router_logits` (default: the config's) each
        MoE layer's router logits (no auxiliary loss)."""
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden, new_cache, router_logits = self.model(
            input_ids, attention_mask, position_ids, cache, cache_position, keep
        )
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        return LLaDA2Output(
            logits=self.lm_head(hidden),
            cache=new_cache if use_cache else None,
            router_logits=router_logits if output_router_logits else None,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading; a local folder in dFactory's fused-experts layout is split on the way
        (`convert_fused_experts`) and loads as a plain `llada2_moe` model; a Hub one is refused, naming the
        fix (download it, or dFactory's converter)."""
        folder = Path(str(pretrained_model_name_or_path))
        if cls.config_class is LLaDA2MoeVeomniConfig and not folder.is_dir():
            name = pretrained_model_name_or_path
            raise ValueError(f"{name} is a llada2_moe_veomni checkpoint on the Hub. {FUSED_EXPERTS_HELP}")
        if not fused_checkpoint(folder):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        from safetensors.torch import load_file

        state_dict: dict[str, torch.Tensor] = {}
        for path in sorted(folder.glob("*.safetensors")):
            state_dict.update(load_file(path))
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(folder)
        plain = LLaDA2MoeConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
        return LLaDA2MoeModelLM._load_plain(plain, convert_fused_experts(state_dict), *args, **kwargs)

    @classmethod
    def _load_plain(cls, config: LLaDA2MoeConfig, state_dict: dict, *args: Any, **kwargs: Any) -> Any:
        """transformers' `from_pretrained` of an in-memory state dict in the Hub layout."""
        return super().from_pretrained(None, *args, config=config, state_dict=state_dict, **kwargs)


class LLaDA2MoeVeomniModelLM(LLaDA2MoeModelLM):
    """What a `llada2_moe_veomni` config loads into: `LLaDA2MoeModelLM`, its fused experts split on load."""

    config_class = LLaDA2MoeVeomniConfig


FUSED_SUFFIXES = {f".mlp.experts.{p}_proj": p for p in ("gate", "up", "down")}


def convert_fused_experts(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every fused expert tensor `model.layers.{i}.mlp.experts.{gate,up,down}_proj`
    [num_experts, out, in] (dFactory's training layout) split into the Hub's per-expert Linear weights
    `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`; the other keys unchanged."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        suffix = next((s for s in FUSED_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            converted[key] = tensor
            continue
        if tensor.dim() != 3:
            raise ValueError(
                f"{key}: a fused expert weight must be [num_experts, out, in], got shape "
                f"{tuple(tensor.shape)}. {FUSED_EXPERTS_HELP}"
            )
        prefix = key[: -len(suffix)]
        for e, weight in enumerate(tensor.unbind(0)):
            converted[f"{prefix}.mlp.experts.{e}.{FUSED_SUFFIXES[suffix]}_proj.weight"] = weight.contiguous()
    return converted


def fused_checkpoint(folder: Path) -> bool:
    """Whether a local folder holds a checkpoint with fused experts (read from the safetensors headers
    alone); False for Hub names and per-expert checkpoints."""
    if not folder.is_dir():
        return False
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            keys = json.loads(handle.read(length))
        if any(key.endswith(suffix) for key in keys for suffix in FUSED_SUFFIXES):
            return True
    return False


AutoConfig.register("llada2_moe", LLaDA2MoeConfig, exist_ok=True)
AutoConfig.register("llada2_moe_veomni", LLaDA2MoeVeomniConfig, exist_ok=True)
for _config, _model in ((LLaDA2MoeConfig, LLaDA2MoeModelLM), (LLaDA2MoeVeomniConfig, LLaDA2MoeVeomniModelLM)):
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _model, exist_ok=True)
