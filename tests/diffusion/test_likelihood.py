"""Per-token log-probabilities: d1's one-step estimate (the reference fixture, gradients, masking, padding) and
the coupled estimate (complementary completion masks)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d1.diffusion.likelihood import per_token_logps
from d1.models.llada import LLaDAConfig, LLaDAModelLM

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "llada-tiny"
MASK, PAD, VOCAB = 49, 48, 50


def tiny_model(seed: int) -> LLaDAModelLM:
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=64,
        vocab_size=VOCAB,
        embedding_size=VOCAB,
        mask_token_id=MASK,
        eos_token_id=PAD,
        pad_token_id=PAD,
        init_std=0.1,
    )
    return LLaDAModelLM(config)


def random_ids(seed: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, PAD, (batch, length), generator=torch.Generator().manual_seed(seed))


class Recorder(nn.Module):
    """Records the (masked) input of every forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config = model, model.config
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.inputs.append(input_ids.clone())
        return SimpleNamespace(logits=self.model(input_ids, attention_mask=attention_mask).logits)


def test_matches_reference_fixture():
    if not (REFERENCE / "reference_outputs.safetensors").exists():
        pytest.skip(f"reference fixture not found at {REFERENCE} (the shared reference checkout is absent)")
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(REFERENCE)).eval()
    ref = load_file(str(REFERENCE / "reference_outputs.safetensors"))
    with torch.no_grad():
        logps = per_token_logps(model, ref["logp_sequence"], completion_length=32, p_mask_prompt=0.0)
    assert logps.dtype == torch.float32 and logps.shape == (3, 32)
    torch.testing.assert_close(logps, ref["logp_completion"], atol=1e-5, rtol=0)


def test_equals_log_softmax_of_the_masked_input_and_gradients_flow():
    model = tiny_model(0)
    ids = random_ids(0, 2, 14)
    logps = per_token_logps(model, ids, completion_length=6, p_mask_prompt=0.0)
    masked = ids.clone()
    masked[:, -6:] = MASK
    expected = model(masked).logits[:, -6:].log_softmax(-1).gather(-1, ids[:, -6:, None]).squeeze(-1)
    torch.testing.assert_close(logps, expected)
    assert (logps < 0).all()
    (-logps.mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.transformer.blocks[0].q_proj.weight.grad.abs().sum() > 0


def test_same_seed_same_mask_and_different_seeds_differ():
    recorder = Recorder(tiny_model(1))
    ids = random_ids(1, 4, 40)
    with torch.no_grad():
        a = per_token_logps(
            recorder, ids, completion_length=8, p_mask_prompt=0.3, generator=torch.Generator().manual_seed(7)
        )
        b = per_token_logps(
            recorder, ids, completion_length=8, p_mask_prompt=0.3, generator=torch.Generator().manual_seed(7)
        )
        per_token_logps(
            recorder, ids, completion_length=8, p_mask_prompt=0.3, generator=torch.Generator().manual_seed(8)
        )
    first, second, other = recorder.inputs
    assert torch.equal(first, second) and torch.equal(a, b)
    assert not torch.equal(first, other)


def test_prompt_masking_rate_and_completion_fully_masked():
    recorder = Recorder(tiny_model(2))
    ids = random_ids(2, 16, 232)
    with torch.no_grad():
        per_token_logps(recorder, ids, completion_length=32, generator=torch.Generator().manual_seed(0))
    (noisy,) = recorder.inputs
    assert (noisy[:, -32:] == MASK).all()
    prompt_masked = noisy[:, :-32] == MASK
    assert 0.13 < prompt_masked.float().mean().item() < 0.17  # default p_mask_prompt = 0.15
    assert torch.equal(noisy[:, :-32][~prompt_masked], ids[:, :-32][~prompt_masked])


def test_left_padded_row_equals_row_alone():
    model = tiny_model(3)
    row = random_ids(3, 1, 12)
    padded = torch.cat([torch.full((1, 5), PAD), row], dim=1)
    attention_mask = torch.cat(
        [torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1
    )
    with torch.no_grad():
        batch = per_token_logps(
            model,
            torch.cat([padded, padded]),
            completion_length=4,
            p_mask_prompt=0.0,
            attention_mask=attention_mask.repeat(2, 1),
        )
        alone = per_token_logps(model, row, completion_length=4, p_mask_prompt=0.0)
    torch.testing.assert_close(batch, alone.expand(2, -1), atol=1e-5, rtol=1e-5)


def test_coupled_scores_each_token_once_under_complementary_masks():
    recorder = Recorder(tiny_model(4))
    ids = random_ids(4, 6, 30)
    with torch.no_grad():
        coupled = per_token_logps(
            recorder,
            ids,
            completion_length=10,
            generator=torch.Generator().manual_seed(3),
            estimator="coupled",
        )
        per_token_logps(recorder, ids, completion_length=10, generator=torch.Generator().manual_seed(3))
    both, one_step = recorder.inputs
    first, second = both[:6], both[6:]
    # the same prompt mask as d1's estimate drawn from the same seed, in both halves
    assert torch.equal(first[:, :20], one_step[:, :20]) and torch.equal(second[:, :20], one_step[:, :20])
    chosen = first[:, 20:] == MASK
    assert torch.equal(second[:, 20:] == MASK, ~chosen)  # complementary: every token masked exactly once
    assert torch.equal(first[:, 20:][~chosen], ids[:, 20:][~chosen])
    assert 0 < chosen.sum() < chosen.numel()
    model = recorder.model
    expected = torch.where(
        chosen,
        model(first).logits[:, 20:].log_softmax(-1).gather(-1, ids[:, 20:, None]).squeeze(-1),
        model(second).logits[:, 20:].log_softmax(-1).gather(-1, ids[:, 20:, None]).squeeze(-1),
    )
    torch.testing.assert_close(coupled, expected, atol=1e-5, rtol=1e-5)


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="estimator='two_step'"):
        per_token_logps(tiny_model(0), random_ids(0, 1, 8), completion_length=4, estimator="two_step")


@pytest.mark.parametrize("completion_length", [0, 13])
def test_bad_completion_length_raises(completion_length):
    with pytest.raises(ValueError, match="completion_length"):
        per_token_logps(tiny_model(4), random_ids(4, 1, 12), completion_length=completion_length)


@pytest.mark.parametrize("estimator", ["one_step", "coupled", "mc_elbo"])
def test_asks_only_for_the_completion_logits_also_through_peft_and_equals_the_full_logits(estimator):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(5)
    ids = random_ids(5, 3, 12)
    kept = []
    model.register_forward_pre_hook(lambda m, a, kw: kept.append(kw.get("logits_to_keep")), with_kwargs=True)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    settings = dict(completion_length=5, estimator=estimator)
    got = per_token_logps(wrapped, ids, generator=torch.Generator().manual_seed(1), **settings)
    full = per_token_logps(Recorder(wrapped), ids, generator=torch.Generator().manual_seed(1), **settings)
    assert kept == [5, None]  # peft passed logits_to_keep on; the Recorder (no such argument) did not
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)
