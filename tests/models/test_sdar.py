"""Native SDAR against the official code's outputs (tests/fixtures/sdar_tiny.json, made by make_sdar_fixture.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import d1
from d1.models.sdar import SDARConfig, SDARForCausalLM, block_causal_mask

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "sdar_tiny"
BLOCK = 4


@pytest.fixture(scope="module")
def sdar_tiny() -> tuple[SDARForCausalLM, dict]:
    return d1.load_model(CHECKPOINT, dtype="float32"), json.loads((FIXTURES / "sdar_tiny.json").read_text())


def _official(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([case["input_ids"]]), torch.tensor(case["logits"])


def _close_to_official(logits: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal up to float32 rounding: the fixture's logits reach 24, and the official float32 logits themselves
    lie 1.9e-5 from a float64 run, so the bound is relative (1e-6 of the largest logit, about 2.4e-5)."""
    return (logits - reference).abs().max().item() <= 1e-6 * reference.abs().max().item()


def test_loads_natively_with_the_official_parameter_names(sdar_tiny) -> None:
    model, fixture = sdar_tiny
    assert isinstance(model, SDARForCausalLM)
    assert model.config.mask_token_id == fixture["mask_id"] == 95
    assert not model.config.logits_shifted and not model.config.tie_word_embeddings
    assert set(model.state_dict()) == set(load_file(CHECKPOINT / "model.safetensors"))


def test_reproduces_official_block_causal_logits(sdar_tiny) -> None:
    model, fixture = sdar_tiny
    for case in fixture["logits"]:
        ids, reference = _official(case)
        mask = block_causal_mask(ids.shape[1], BLOCK)
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits[0]
            additive = model(
                ids, attention_mask=torch.zeros(mask.shape).masked_fill(~mask, -torch.inf)
            ).logits[0]
            bidirectional = model(ids).logits[0]
        assert _close_to_official(logits, reference)
        assert torch.allclose(additive, logits, atol=1e-6)
        assert (bidirectional - reference).abs().max().item() > 0.1  # the mask matters on this model


def test_bfloat16_weights_stay_close_to_the_official_float32_logits(sdar_tiny) -> None:
    _, fixture = sdar_tiny
    model = d1.load_model(CHECKPOINT, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    for case in fixture["logits"]:
        ids, reference = _official(case)
        with torch.no_grad():
            logits = model(ids, attention_mask=block_causal_mask(ids.shape[1], BLOCK)).logits[0].float()
        assert (logits - reference).abs().max().item() < 0.05 * reference.abs().max().item()


def test_cached_blocks_then_next_block_reproduce_official_logits(sdar_tiny) -> None:
    """The official decoding: finished blocks cached block-causally, the next block over the cache (no mask),
    a finished block appended to the cache (official `store_kv`), then the partial last block."""
    model, fixture = sdar_tiny
    ids, reference = _official(fixture["logits"][1])
    assert ids.shape[1] == 13
    with torch.no_grad():
        prefix = model(ids[:, :8], attention_mask=block_causal_mask(8, BLOCK), use_cache=True)
        block = model(ids[:, 8:12], cache=prefix.cache, use_cache=True)
        last = model(ids[:, 12:], cache=block.cache)
    assert [kv[0].shape[2] for kv in block.cache] == [12, 12]
    assert block.cache[0][1].shape == (1, 1, 12, 16)  # [B, kv heads, T, head_dim]
    assert _close_to_official(prefix.logits[0], reference[:8])
    assert _close_to_official(block.logits[0], reference[8:12])
    assert _close_to_official(last.logits[0], reference[12:])


def test_left_padded_row_with_2d_mask_equals_unpadded_row(sdar_tiny) -> None:
    model, fixture = sdar_tiny
    ids = torch.tensor(fixture["logits"][0]["input_ids"])
    padded = torch.cat([torch.full((3,), 7), ids])[None]
    mask = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)])[None]
    with torch.no_grad():
        alone = model(ids[None]).logits[0]
        with_padding = model(padded, attention_mask=mask).logits[0, 3:]
    # padding changes the matmul shapes and so the kernels' summation order: 1.05e-5 on an AMD EPYC (AVX-512)
    assert (with_padding - alone).abs().max().item() <= 5e-5


def test_left_padded_batch_under_per_row_block_masks_reproduces_official_logits(sdar_tiny) -> None:
    """A batch of two prompts, the shorter left-padded: each row's block grid starts at its first real token
    (4-D boolean mask per row, explicit positions), so each row reproduces the official batch-1 logits."""
    model, fixture = sdar_tiny
    (short, short_ref), (long, long_ref) = (_official(case) for case in fixture["logits"])
    pad = long.shape[1] - short.shape[1]
    ids = torch.cat([torch.cat([torch.full((1, pad), 7), short], 1), long])
    real = torch.ones(ids.shape, dtype=torch.bool)
    real[0, :pad] = False
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    blocks = positions // BLOCK
    mask = (real[:, None, :] & (blocks[:, None, :] <= blocks[:, :, None]))[:, None]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
    assert torch.isfinite(logits).all()
    assert _close_to_official(logits[0, pad:], short_ref)
    assert _close_to_official(logits[1], long_ref)


def test_logits_to_keep_returns_the_same_columns(sdar_tiny) -> None:
    model, fixture = sdar_tiny
    ids, _ = _official(fixture["logits"][1])
    mask = block_causal_mask(ids.shape[1], BLOCK)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        last = model(ids, attention_mask=mask, logits_to_keep=5).logits
        window = model(ids, attention_mask=mask, logits_to_keep=slice(4, 8)).logits
    assert torch.allclose(last, full[:, -5:], atol=1e-6)
    assert torch.allclose(window, full[:, 4:8], atol=1e-6)


def test_query_with_no_key_attends_to_itself(sdar_tiny) -> None:
    """A 4-D boolean row with no key (a pad query) stays finite, with and without a cache."""
    model, fixture = sdar_tiny
    ids, _ = _official(fixture["logits"][1])
    mask = block_causal_mask(13, BLOCK).clone()
    mask[..., 2, :] = False
    with torch.no_grad():
        cache = model(ids[:, :8], attention_mask=block_causal_mask(8, BLOCK), use_cache=True).cache
        rows = torch.ones(1, 1, 4, 12, dtype=torch.bool)
        rows[..., 1, :] = False
        full = model(ids, attention_mask=mask).logits
        cached = model(ids[:, 8:12], attention_mask=rows, cache=cache).logits
    assert torch.isfinite(full).all() and torch.isfinite(cached).all()


def test_activation_checkpointing_recomputes_blocks_and_keeps_the_gradients(sdar_tiny) -> None:
    model, fixture = sdar_tiny
    ids, _ = _official(fixture["logits"][0])
    calls = []
    hook = model.model.layers[0].mlp.register_forward_pre_hook(
        lambda *_: calls.append(1)
    )  # recompute stops early
    grads, passes = [], []
    model.train()
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        calls.clear()
        logits = model(ids, attention_mask=block_causal_mask(ids.shape[1], BLOCK)).logits
        logits.logsumexp(-1).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_norm.weight.grad.clone())
        passes.append(len(calls))
    hook.remove()
    model.activation_checkpointing_disable()
    model.eval()
    model.zero_grad()
    assert passes == [1, 2]  # the checkpointed block runs again in the backward pass
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_released_config_fields_load_without_remote_code(tmp_path: Path) -> None:
    """Released configs name flex attention and remote code; both are ignored by the native class."""
    folder = tmp_path / "sdar"
    shutil.copytree(CHECKPOINT, folder)
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" in config
    (folder / "config.json").write_text(json.dumps({**config, "attn_implementation": "flex_attention"}))
    model = d1.load_model(folder, dtype="float32")
    assert isinstance(model, SDARForCausalLM) and model.config.block_size == 4


def test_tied_embeddings_save_without_a_head_and_reload_tied(tmp_path: Path) -> None:
    config = SDARConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        mask_token_id=39,
        bos_token_id=0,
        eos_token_id=1,
    )
    assert config.tie_word_embeddings  # SDAR-1.7B-Chat's default
    model = SDARForCausalLM(config)
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = d1.load_model(tmp_path, dtype="float32")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("use_sliding_window", True),
        ("hidden_act", "gelu"),
    ],
)
def test_unsupported_options_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SDARConfig.{field}.*trust_remote_code=True"):
        SDARConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **{field: value})
