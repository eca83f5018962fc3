"""Native LLaDA 2.x against the official code's outputs (tests/fixtures/llada2_tiny*, made by
tests/fixtures/make_llada2_fixture.py from inclusionAI/dFactory's modeling_llada2_moe.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import d1
from d1.models.llada2 import (
    LLaDA2MoeConfig,
    LLaDA2MoeModelLM,
    LLaDA2MoeVeomniModelLM,
    convert_fused_experts,
    route,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "llada2_tiny"
# float32 logits up to 33: about 15 ulps; another CPU's kernels (AMD EPYC, AVX-512) differ from the fixture's
# machine by up to 1.8e-5, a wrong model by far more than 1e-3
TOL = 5e-5


@pytest.fixture(scope="module")
def llada2() -> tuple[LLaDA2MoeModelLM, dict[str, torch.Tensor]]:
    model = d1.load_model(CHECKPOINT, dtype="float32").eval()
    return model, load_file(FIXTURES / "llada2_tiny_logits.safetensors")


def block_causal(length: int, block: int) -> torch.Tensor:
    """[1, 1, L, L] boolean: a position sees every block up to its own (the official generate's mask)."""
    blocks = torch.arange(length) // block
    return (blocks[None, :] <= blocks[:, None])[None, None]


def test_loads_natively_with_the_official_names(llada2) -> None:
    model, _ = llada2
    assert isinstance(model, LLaDA2MoeModelLM)
    assert model.config.mask_token_id == 95 and not model.config.logits_shifted
    names = set(model.state_dict())
    assert {
        "model.word_embeddings.weight",
        "model.layers.0.attention.query_key_value.weight",
        "model.layers.0.attention.query_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.expert_bias",
        "model.layers.1.mlp.experts.7.down_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "lm_head.weight",
    } <= names
    assert names == set(load_file(CHECKPOINT / "model.safetensors"))


def test_hub_config_with_remote_code_fields_loads_natively(llada2, tmp_path: Path) -> None:
    """The Hub's config.json names remote code (`auto_map`) and carries fields the model does not read."""
    _, ref = llada2
    config = json.loads((CHECKPOINT / "config.json").read_text())
    hub_only = {
        "auto_map": {"AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "rotary_dim": 8,
        "router_dtype": "fp32",
        "moe_router_enable_expert_bias": True,
        "using_split_qkv_in_self_attention": False,
        "use_rmsnorm": True,
    }
    (tmp_path / "config.json").write_text(json.dumps({**config, **hub_only}))
    shutil.copy(CHECKPOINT / "model.safetensors", tmp_path)
    model = d1.load_model(tmp_path, dtype="float32")
    assert type(model) is LLaDA2MoeModelLM
    with torch.no_grad():
        assert (model(ref["input_1"]).logits - ref["logits_1"]).abs().max().item() <= TOL


@pytest.mark.parametrize("index", [0, 1])
def test_reproduces_official_logits_with_and_without_block_mask(llada2, index: int) -> None:
    model, ref = llada2
    ids = ref[f"input_{index}"]
    mask = block_causal(ids.shape[1], 4)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    with torch.no_grad():
        plain = model(ids).logits
        boolean = model(ids, attention_mask=mask).logits
        added = model(ids, attention_mask=additive).logits
    assert (plain - ref[f"logits_{index}"]).abs().max().item() <= TOL
    assert (boolean - ref[f"block4_logits_{index}"]).abs().max().item() <= TOL
    assert (added - ref[f"block4_logits_{index}"]).abs().max().item() <= TOL
    assert (plain - boolean).abs().max().item() > 1.0  # the mask matters on this input


def test_bfloat16_follows_the_official_rounding(llada2) -> None:
    """Rotary in the activations' dtype and the router in float32, as the official: recorded bit-equal on the
    fixture's machine; 0.5 leaves room for another CPU's bf16 kernels, not for a flipped expert choice
    (a float32 rotation flips one token's experts here and moves its logits by 16)."""
    _, ref = llada2
    model = d1.load_model(CHECKPOINT, dtype="bfloat16").eval()
    for index in (0, 1):
        ids = ref[f"input_{index}"]
        with torch.no_grad():
            plain = model(ids).logits.float()
            masked = model(ids, attention_mask=block_causal(ids.shape[1], 4)).logits.float()
        assert (plain - ref[f"bf16_logits_{index}"]).abs().max().item() <= 0.5
        assert (masked - ref[f"bf16_block4_logits_{index}"]).abs().max().item() <= 0.5


def test_left_padded_row_equals_unpadded_row(llada2) -> None:
    model, ref = llada2
    long, short = ref["input_0"][0], ref["input_1"][0]
    pad = long.numel() - short.numel()
    ids = torch.stack([long, torch.cat([torch.full((pad,), 94), short])])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
    assert (padded[0] - ref["logits_0"][0]).abs().max().item() <= TOL
    assert (padded[1, pad:] - ref["logits_1"][0]).abs().max().item() <= TOL


def test_logits_to_keep_returns_the_same_columns(llada2) -> None:
    model, ref = llada2
    ids = ref["input_0"]
    with torch.no_grad():
        last = model(ids, logits_to_keep=4).logits
        window = model(ids, logits_to_keep=slice(3, 9)).logits
    assert torch.allclose(last, ref["logits_0"][:, -4:], atol=TOL)
    assert torch.allclose(window, ref["logits_0"][:, 3:9], atol=TOL)


def test_cached_blocks_then_next_block_equal_the_block_causal_forward(llada2) -> None:
    model, ref = llada2
    ids, length = ref["input_0"], ref["input_0"].shape[1]
    with torch.no_grad():
        prefix = model(ids[:, :4], use_cache=True).cache  # block 0 sees only itself
        grown = model(ids[:, 4:8], cache=prefix, use_cache=True)
        sees_all = torch.ones(1, 1, 4, length, dtype=torch.bool)
        last = model(ids[:, 8:], cache=grown.cache, attention_mask=sees_all)
    assert [kv[0].shape for kv in grown.cache] == [torch.Size([1, 1, 8, 16])] * 2
    assert (grown.logits - ref["block4_logits_0"][:, 4:8]).abs().max().item() <= TOL
    assert (last.logits - ref["block4_logits_0"][:, 8:]).abs().max().item() <= TOL


def restated_route(logits: list[float], bias: list[float], groups: int, keep: int, k: int, scale: float):
    """The router in plain Python: score groups by their two best biased scores, keep the best `keep`,
    take the k best biased experts inside them, weight by normalised unbiased scores times `scale`."""
    scores = [1 / (1 + math.exp(-x)) for x in logits]
    biased = [s + b for s, b in zip(scores, bias, strict=True)]
    size = len(scores) // groups
    rank = sorted(range(groups), key=lambda g: -sum(sorted(biased[g * size : (g + 1) * size])[-2:]))
    allowed = [e for g in rank[:keep] for e in range(g * size, (g + 1) * size)]
    chosen = sorted(allowed, key=lambda e: -biased[e])[:k]
    total = sum(scores[e] for e in chosen)
    return chosen, [scores[e] / total * scale for e in chosen]


def test_router_picks_inside_the_best_groups_with_the_bias_and_weights_by_unbiased_scores() -> None:
    # Group 0 (experts 0-3) holds the best expert (0: 0.95) but group 1 (4-7) the best top-2 sum (.87 + .82);
    # inside it the bias lifts expert 6 (0.77 + 0.1) above experts 5 (0.82) and 7 (0.80): unbiased, 5 and 7
    # would win. The weights use the unbiased scores of 6 and 5.
    logits = torch.tensor([[3.0, -3.0, -3.0, -3.0, -1.0, 1.5, 1.2, 1.4]])
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.1, 0.0])
    chosen, weights = route(logits, bias, n_group=2, topk_group=1, top_k=2, scale=2.5)
    assert chosen.tolist() == [[6, 5]]
    s5, s6 = torch.sigmoid(torch.tensor([1.5, 1.2])).tolist()
    assert weights[0].tolist() == pytest.approx([2.5 * s6 / (s5 + s6), 2.5 * s5 / (s5 + s6)], rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1, 12, generator=generator) * 2
        bias = torch.randn(12, generator=generator) * 0.3
        chosen, weights = route(logits, bias, n_group=4, topk_group=2, top_k=3, scale=1.5)
        expected, expected_weights = restated_route(logits[0].tolist(), bias.tolist(), 4, 2, 3, 1.5)
        assert chosen[0].tolist() == expected
        assert weights[0].tolist() == pytest.approx(expected_weights, rel=1e-5)


def test_fused_experts_checkpoint_is_split_on_load(llada2, tmp_path: Path) -> None:
    model, ref = llada2
    state = load_file(CHECKPOINT / "model.safetensors")
    experts = 8
    for proj in ("gate", "up", "down"):
        names = [f"model.layers.1.mlp.experts.{e}.{proj}_proj.weight" for e in range(experts)]
        state[f"model.layers.1.mlp.experts.{proj}_proj"] = torch.stack([state.pop(n) for n in names])
    save_file(state, tmp_path / "model.safetensors")
    config = json.loads((CHECKPOINT / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llada2_moe_veomni"}))
    fused = d1.load_model(tmp_path, dtype="float32").eval()
    assert type(fused) is LLaDA2MoeModelLM and fused.config.model_type == "llada2_moe"
    with torch.no_grad():
        logits = fused(ref["input_0"]).logits
    assert (logits - ref["logits_0"]).abs().max().item() <= TOL
    fused.save_pretrained(tmp_path / "split")
    assert json.loads((tmp_path / "split" / "config.json").read_text())["model_type"] == "llada2_moe"


def test_fused_expert_tensor_of_the_wrong_rank_is_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match=r"model\.layers\.3\.mlp\.experts\.up_proj.*moe_convertor\.py"):
        convert_fused_experts({"model.layers.3.mlp.experts.up_proj": torch.zeros(4, 8)})
    untouched = {"model.layers.3.mlp.experts.0.up_proj.weight": torch.zeros(2, 2)}
    assert convert_fused_experts(untouched) == untouched
    with pytest.raises(ValueError, match=r"someone/llada2-veomni is a llada2_moe_veomni .*hf download"):
        LLaDA2MoeVeomniModelLM.from_pretrained("someone/llada2-veomni")


def test_lora_on_attention_shared_and_routed_experts_trains(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = d1.load_model(CHECKPOINT, dtype="float32")
    targets = r".*\.(attention\.(query_key_value|dense)|shared_experts\.\w+_proj|experts\.\d+\.\w+_proj)"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    layer = "base_model.model.model.layers.1"
    assert {
        f"{layer}.attention.query_key_value",
        f"{layer}.attention.dense",
        f"{layer}.mlp.shared_experts.gate_proj",
        f"{layer}.mlp.experts.5.down_proj",
    } <= adapted
    assert not any(".mlp.gate" in n and "gate_proj" not in n for n in adapted)  # the router stays frozen
    ids = torch.randint(0, 94, (2, 12), generator=torch.Generator().manual_seed(0))
    peft_model(ids).logits.logsumexp(-1).mean().backward()
    grads = {n for n, p in peft_model.named_parameters() if p.requires_grad and p.grad is not None}
    assert any("experts." in n and "lora_B" in n for n in grads)
    assert any("shared_experts" in n and "lora_B" in n for n in grads)


def test_gradient_checkpointing_gives_the_same_gradients(llada2) -> None:
    _, ref = llada2
    model = d1.load_model(CHECKPOINT, dtype="float32").train()
    ids = ref["input_0"]

    def grads() -> torch.Tensor:
        model.zero_grad()
        model(ids).logits.logsumexp(-1).mean().backward()
        return model.model.layers[1].mlp.gate.weight.grad.clone()

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert torch.allclose(grads(), plain, atol=1e-6)


def test_router_logits_are_returned_per_moe_layer(llada2) -> None:
    model, ref = llada2
    with torch.no_grad():
        out = model(ref["input_1"], output_router_logits=True)
    assert [tuple(r.shape) for r in out.router_logits] == [(1, 10, 8)]
    assert model(ref["input_1"]).router_logits is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_group", 3, "must split into n_group=3"),
        ("num_experts_per_tok", 5, r"num_experts_per_tok=5 in 1\.\.4"),
        ("norm_head", True, "norm_head=True is not supported"),
    ],
)
def test_inconsistent_config_is_refused_naming_the_field(field: str, value, message: str) -> None:
    fields = {"num_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, field: value}
    with pytest.raises(ValueError, match=message):
        LLaDA2MoeConfig(**fields)


def test_fixture_is_small_and_names_its_source() -> None:
    record = json.loads((FIXTURES / "llada2_tiny.json").read_text())
    assert record["commit"] == "92b6890808088b112fcf5fc73a341b78b6ab76bf"
    assert any(case["includes_prompt"] for case in record["cases"])
    assert any(case["ends_at_eos"] and not case["includes_prompt"] for case in record["cases"])
    files = [*CHECKPOINT.iterdir(), *FIXTURES.glob("llada2_tiny.*"), *FIXTURES.glob("llada2_tiny_*")]
    assert sum(f.stat().st_size for f in files) < 300_000
