"""Native LLaDA's block KV cache: what holds exactly (the full forward, reused keys, first-layer keys,
`logits_to_keep`) and what holds up to float tolerance (partial forwards over a block against the full one)."""

from __future__ import annotations

import pytest
import torch

from d1.models.llada import LLaDAConfig, LLaDAModelLM, LLaDAOutput

VOCAB, MASK, EOS = 50, 49, 48
TOL = 1e-5


def model_with(n_kv_heads: int, seed: int = 0) -> LLaDAModelLM:
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=48,
        n_heads=6,
        n_kv_heads=n_kv_heads,
        n_layers=3,
        mlp_hidden_size=80,
        vocab_size=VOCAB,
        mask_token_id=MASK,
        eos_token_id=EOS,
        pad_token_id=EOS,
        init_std=0.2,
    )
    return LLaDAModelLM(config).eval()


def sequence(batch: int = 2, prompt: int = 7, gen: int = 12, decoded: int = 5) -> torch.Tensor:
    """Prompt tokens, `decoded` generated tokens, then masks (a state midway through decoding)."""
    ids = torch.randint(0, EOS, (batch, prompt + gen), generator=torch.Generator().manual_seed(batch))
    ids[:, prompt + decoded :] = MASK
    return ids


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    ids = sequence(batch=3)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :3] = 0
    attention_mask[2, :1] = 0
    return ids.masked_fill(attention_mask == 0, EOS), attention_mask


@pytest.mark.parametrize("n_kv_heads", [6, 2, 1])
@torch.no_grad()
def test_full_forward_with_cache_is_the_uncached_forward(n_kv_heads: int) -> None:
    model, ids = model_with(n_kv_heads), sequence()
    out = model(ids, use_cache=True)
    assert isinstance(out, LLaDAOutput) and model(ids).cache is None
    assert torch.equal(out.logits, model(ids).logits)
    assert len(out.cache) == 3
    for k, v in out.cache:
        assert k.shape == v.shape == (2, n_kv_heads, ids.shape[1], 8)


@torch.no_grad()
def test_logits_to_keep_matches_full_logits() -> None:
    """Same values as the full forward (bit-identical on one thread; a multi-threaded BLAS may block the
    smaller matmuls differently and change the last bits, hence the float32-rounding tolerance)."""
    model, (ids, attention_mask) = model_with(2), left_padded()
    full = model(ids, attention_mask=attention_mask).logits
    kept_last = model(ids, attention_mask=attention_mask, logits_to_keep=4).logits
    assert kept_last.shape == full[:, -4:].shape and (kept_last - full[:, -4:]).abs().max() < 1e-5
    kept = model(ids, attention_mask=attention_mask, logits_to_keep=slice(7, 12)).logits
    assert kept.shape == full[:, 7:12].shape and (kept - full[:, 7:12]).abs().max() < 1e-5


@pytest.mark.parametrize("n_kv_heads, padded", [(6, False), (2, True), (1, True)])
@torch.no_grad()
def test_prefix_cache_forward_matches_full_forward(n_kv_heads: int, padded: bool) -> None:
    """Fast-dLLM's prefix step: the block and everything after it, on the cached prefix."""
    model = model_with(n_kv_heads)
    ids, attention_mask = left_padded() if padded else (sequence(), None)
    start = 10
    full = model(ids, attention_mask=attention_mask, use_cache=True)
    prefix = tuple((k[:, :, :start], v[:, :, :start]) for k, v in full.cache)
    out = model(ids[:, start:], attention_mask=attention_mask, cache=prefix, use_cache=True)
    assert (out.logits - full.logits[:, start:]).abs().max() < TOL
    for (k, v), (full_k, full_v), (old_k, old_v) in zip(out.cache, full.cache, prefix, strict=True):
        assert torch.equal(k[:, :, :start], old_k) and torch.equal(v[:, :, :start], old_v)
        assert (k - full_k).abs().max() < TOL and (v - full_v).abs().max() < TOL
    first_k, first_v = out.cache[0]  # the first layer sees the same tokens at the same positions
    assert torch.equal(first_k, full.cache[0][0]) and torch.equal(first_v, full.cache[0][1])
    block = model(ids[:, start:], attention_mask=attention_mask, cache=prefix, logits_to_keep=slice(0, 4))
    assert torch.equal(
        block.logits, model(ids[:, start:], attention_mask=attention_mask, cache=prefix).logits[:, :4]
    )


@pytest.mark.parametrize("n_kv_heads, padded", [(6, False), (2, True)])
@torch.no_grad()
def test_dual_cache_forward_matches_full_forward(n_kv_heads: int, padded: bool) -> None:
    """Fast-dLLM's dual step: only the block, written over its own slots of the full cache."""
    model = model_with(n_kv_heads)
    ids, attention_mask = left_padded() if padded else (sequence(), None)
    start, end = 10, 14
    full = model(ids, attention_mask=attention_mask, use_cache=True)
    position = torch.arange(start, end)
    out = model(
        ids[:, start:end],
        attention_mask=attention_mask,
        cache=full.cache,
        cache_position=position,
        use_cache=True,
    )
    assert (out.logits - full.logits[:, start:end]).abs().max() < TOL
    for (k, _), (full_k, _) in zip(out.cache, full.cache, strict=True):
        assert k.shape == full_k.shape
        assert torch.equal(k[:, :, :start], full_k[:, :, :start]) and torch.equal(
            k[:, :, end:], full_k[:, :, end:]
        )


@torch.no_grad()
def test_dual_cache_sees_the_new_block_tokens() -> None:
    """After the block changes, its own keys are fresh (exact in the first layer), the rest stay stale."""
    model, ids = model_with(2), sequence()
    start, end = 12, 16
    stale = model(ids, use_cache=True)
    changed = ids.clone()
    changed[:, start] = 3
    position = torch.arange(start, end)
    out = model(changed[:, start:end], cache=stale.cache, cache_position=position, use_cache=True)
    assert (out.logits - stale.logits[:, start:end]).abs().max() > 1e-3
    fresh_k = model(changed, use_cache=True).cache[0][0]
    assert torch.equal(out.cache[0][0][:, :, start:end], fresh_k[:, :, start:end])
    for (k, _), (stale_k, _) in zip(out.cache, stale.cache, strict=True):
        assert torch.equal(k[:, :, :start], stale_k[:, :, :start]) and torch.equal(
            k[:, :, end:], stale_k[:, :, end:]
        )


@torch.no_grad()
def test_left_padded_row_with_cache_equals_the_row_alone() -> None:
    model, (ids, attention_mask) = model_with(2), left_padded()
    start = 12
    full = model(ids, attention_mask=attention_mask, use_cache=True)
    prefix = tuple((k[:, :, :start], v[:, :, :start]) for k, v in full.cache)
    batched = model(ids[:, start:], attention_mask=attention_mask, cache=prefix).logits
    row = ids[:1, 3:]
    alone_full = model(row, use_cache=True)
    alone_prefix = tuple((k[:, :, : start - 3], v[:, :, : start - 3]) for k, v in alone_full.cache)
    alone = model(row[:, start - 3 :], cache=alone_prefix).logits
    assert (batched[:1] - alone).abs().max() < TOL


def test_cache_position_past_the_cache_is_an_error() -> None:
    model, ids = model_with(6), sequence()
    cache = model(ids, use_cache=True).cache
    short = tuple((k[:, :, :5], v[:, :, :5]) for k, v in cache)
    with pytest.raises(ValueError, match="cache_position"):
        model(ids[:, 3:6], cache=short, cache_position=torch.arange(3, 6))
