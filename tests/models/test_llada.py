"""Native LLaDA against the official code's outputs, and against an independent restatement on other configs."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM

from d1.models.llada import LLaDAConfig, LLaDAModelLM
from tests.conftest import reference_path


def test_reproduces_official_logits() -> None:
    folder = reference_path("llada-tiny")
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    ref = load_file(folder / "reference_outputs.safetensors")
    assert isinstance(model, LLaDAModelLM)
    with torch.no_grad():
        logits = model(ref["logits_input_ids"]).logits
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() < 1e-5
    assert model.config.mask_token_id == 63


def _reference_forward(model: LLaDAModelLM, ids: torch.Tensor) -> torch.Tensor:
    """Textbook LLaDA in float64, one head at a time, rotary embedding via complex numbers (interleave-free)."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    p = "model.transformer."

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    hd, length = cfg.d_model // cfg.n_heads, ids.shape[1]
    half = hd // 2
    freqs = torch.tensor(
        [[pos / cfg.rope_theta ** (2 * i / hd) for i in range(half)] for pos in range(length)],
        dtype=torch.float64,
    )
    rot = torch.polar(torch.ones_like(freqs), freqs)

    def rope(x: torch.Tensor) -> torch.Tensor:  # rotate-half pairs dimension i with i + half
        z = torch.complex(x[..., :half], x[..., half:]) * rot
        return torch.cat([z.real, z.imag], -1)

    x = sd[p + "wte.weight"][ids]
    group = cfg.n_heads // cfg.n_kv_heads
    for i in range(cfg.n_layers):
        b = f"{p}blocks.{i}."
        h = rms(x, sd[b + "attn_norm.weight"])
        q, k, v = (h @ sd[b + n].T for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
        heads = []
        for head in range(cfg.n_heads):
            kv = head // group
            qh, kh = rope(q[..., head * hd : (head + 1) * hd]), rope(k[..., kv * hd : (kv + 1) * hd])
            att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(hd), -1)
            heads.append(att @ v[..., kv * hd : (kv + 1) * hd])
        x = x + torch.cat(heads, -1) @ sd[b + "attn_out.weight"].T
        h = rms(x, sd[b + "ff_norm.weight"])
        gate, up = h @ sd[b + "ff_proj.weight"].T, h @ sd[b + "up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[b + "ff_out.weight"].T
    return rms(x, sd[p + "ln_f.weight"]) @ sd[p + "ff_out.weight"].T


CONFIGS = [
    dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=64, rope_theta=10000.0),
    dict(d_model=48, n_heads=6, n_kv_heads=2, n_layers=3, mlp_hidden_size=80, rope_theta=500000.0),
    dict(d_model=64, n_heads=8, n_kv_heads=1, n_layers=1, mlp_hidden_size=96, rope_theta=123.0),
]


@pytest.mark.parametrize("sizes", CONFIGS)
def test_matches_independent_restatement(sizes: dict) -> None:
    torch.manual_seed(0)
    config = LLaDAConfig(
        **sizes, vocab_size=50, embedding_size=56, mask_token_id=49, eos_token_id=48, pad_token_id=48
    )
    model = LLaDAModelLM(config).eval()
    for param in model.parameters():  # larger weights than the init, so attention is far from uniform
        param.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(param.numel()))
    ids = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids).logits.double()
    assert got.shape == (2, 13, 56)
    assert (got - _reference_forward(model, ids)).abs().max().item() < 1e-4


def test_left_padding_matches_unpadded_row() -> None:
    torch.manual_seed(0)
    config = LLaDAConfig(**CONFIGS[1], vocab_size=50, mask_token_id=49, eos_token_id=48, pad_token_id=48)
    model = LLaDAModelLM(config).eval()
    short = torch.randint(0, 48, (1, 7), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.full((1, 4), 48), short], dim=1)
    attention_mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 7)], dim=1).long()
    with torch.no_grad():
        alone = model(short).logits
        batched = model(padded, attention_mask=attention_mask).logits[:, 4:]
    assert (alone - batched).abs().max().item() < 1e-5


def test_save_load_round_trip_and_auto_classes(tmp_path) -> None:
    config = LLaDAConfig(**CONFIGS[0], vocab_size=40, mask_token_id=39, eos_token_id=38, pad_token_id=38)
    model = LLaDAModelLM(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 38, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert reloaded.config.n_kv_heads == 4 and reloaded.config.mask_token_id == 39
    names = set(reloaded.state_dict())
    assert "model.transformer.blocks.0.q_proj.weight" in names and "model.transformer.ff_out.weight" in names


def test_bfloat16_forward_close_to_float32() -> None:
    config = LLaDAConfig(**CONFIGS[0], vocab_size=40, mask_token_id=39, eos_token_id=38, pad_token_id=38)
    model = LLaDAModelLM(config).eval()
    ids = torch.randint(0, 38, (1, 8))
    with torch.no_grad():
        full = model(ids).logits
        half = model.to(torch.bfloat16)(ids).logits
    assert half.dtype == torch.bfloat16
    assert (full - half.float()).abs().max().item() < 0.05


def test_unsupported_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="alibi"):
        LLaDAConfig(d_model=32, n_heads=4, alibi=True)
    with pytest.raises(ValueError, match="n_kv_heads"):
        LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=3)
