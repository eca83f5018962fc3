"""Native Dream against the official code's outputs (../shared/reference/dream-tiny)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import d1
from d1.models.dream import DreamConfig, DreamModel
from tests.conftest import reference_path


@pytest.fixture(scope="module")
def dream_tiny() -> tuple[DreamModel, dict[str, torch.Tensor]]:
    folder = reference_path("dream-tiny")
    return d1.load_model(folder, dtype="float32"), load_file(folder / "reference_outputs.safetensors")


def test_loads_natively_despite_auto_map(dream_tiny) -> None:
    model, _ = dream_tiny
    assert isinstance(model, DreamModel)
    assert model.config.mask_token_id == 151
    assert model.config.logits_shifted
    names = set(model.state_dict())
    assert {"model.layers.0.self_attn.q_proj.bias", "model.embed_tokens.weight", "lm_head.weight"} <= names


def test_reproduces_official_logits(dream_tiny) -> None:
    model, ref = dream_tiny
    with torch.no_grad():
        logits = model(ref["logits_input"]).logits
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() <= 1e-5


def _dream_mask_and_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How Dream's sampler calls its model on padded rows: 4-D mask_i AND mask_j, positions cumsum - 1 (pads 1)."""
    real = mask.bool()
    return real[:, None, :, None] & real[:, None, None, :], (mask.cumsum(-1) - 1).masked_fill(~real, 1)


def test_padded_logits_match_official_with_4d_and_2d_masks(dream_tiny) -> None:
    model, ref = dream_tiny
    mask = ref["padded_attention_mask"]
    real = mask.bool()
    with torch.no_grad():
        four_d = model(ref["padded_input"], *_dream_mask_and_positions(mask)).logits
        two_d = model(ref["padded_input"], attention_mask=mask).logits
    assert torch.isfinite(four_d).all()
    assert (four_d - ref["padded_logits"])[real].abs().max().item() <= 1e-5
    assert (two_d - ref["padded_logits"])[real].abs().max().item() <= 1e-5


def test_left_padding_equals_unpadded_row(dream_tiny) -> None:
    model, ref = dream_tiny
    ids, mask = ref["padded_input"], ref["padded_attention_mask"]
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits[1, 5:]
        alone = model(ids[1:, 5:]).logits[0]
    assert (padded - alone).abs().max().item() <= 1e-5


def test_logits_to_keep_returns_the_same_columns(dream_tiny) -> None:
    model, ref = dream_tiny
    ids = ref["logits_input"]
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=5).logits
        window = model(ids, logits_to_keep=slice(3, 9)).logits
    assert torch.allclose(last, full[:, -5:], atol=1e-6)
    assert torch.allclose(window, full[:, 3:9], atol=1e-6)


def test_dual_cache_replacing_a_block_reproduces_full_forward(dream_tiny) -> None:
    model, ref = dream_tiny
    ids = ref["logits_input"]
    with torch.no_grad():
        full = model(ids).logits
        whole = model(ids, use_cache=True).cache
        replaced = model(ids[:, 10:14], cache=whole, cache_position=torch.arange(10, 14)).logits
    assert torch.allclose(replaced, full[:, 10:14], atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("use_sliding_window", True),
        ("hidden_act", "gelu"),
    ],
)
def test_unsupported_options_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"DreamConfig.{field}.*trust_remote_code=True"):
        DreamConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **{field: value})


def test_bfloat16_weights_stay_close_to_the_official_float32_logits() -> None:
    folder = reference_path("dream-tiny")
    ref = load_file(folder / "reference_outputs.safetensors")
    model = d1.load_model(folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(ref["logits_input"]).logits.float()
    assert (logits - ref["logits"]).abs().max().item() < 0.05 * ref["logits"].abs().max().item()
    assert torch.equal(logits.argmax(-1), ref["logits"].argmax(-1))
