"""Dream's logit shift through d1's shared paths: per-token log-probs, LLaDA's block sampler and its block
KV caches, each against the raw model output realigned by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import d1
from d1.diffusion.logits import logits_are_shifted, predicting_logits, shift_logits
from d1.diffusion.sampling import _Decoder
from tests.conftest import reference_path

MASK = 151


@pytest.fixture(scope="module")
def dream_tiny():
    folder = reference_path("dream-tiny")
    return d1.load_model(folder, dtype="float32"), load_file(folder / "reference_outputs.safetensors")


class Realigned(nn.Module):
    """A Dream model seen as an unshifted one: full forward, logits realigned by hand (no logits_to_keep)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config = model, SimpleNamespace(mask_token_id=MASK)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(
            logits=shift_logits(self.model(input_ids, attention_mask=attention_mask).logits)
        )


def test_flag_read_from_config(dream_tiny, tiny_model_dir) -> None:
    assert logits_are_shifted(dream_tiny[0]) and not logits_are_shifted(d1.load_model(tiny_model_dir))
    assert not logits_are_shifted(Realigned(dream_tiny[0]))


@pytest.mark.parametrize("keep", [slice(0, None), slice(0, 1), slice(3, 9), 5])
def test_predicting_logits_equal_realigned_full_logits(dream_tiny, keep) -> None:
    model, ref = dream_tiny
    ids = ref["logits_input"]
    with torch.no_grad():
        full = shift_logits(model(ids).logits)
        got, _ = predicting_logits(model, ids, keep)
    expected = full[:, -keep:] if isinstance(keep, int) else full[:, keep]
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


def test_one_step_logps_match_official_shifted_fixture(dream_tiny) -> None:
    model, ref = dream_tiny
    with torch.no_grad():
        logps = d1.per_token_logps(model, ref["logp_sequences"], completion_length=12, p_mask_prompt=0.0)
    assert (logps - ref["logp_completion_shifted"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("estimator", ["one_step", "coupled"])
def test_logps_equal_the_realigned_model(dream_tiny, estimator: str) -> None:
    model, ref = dream_tiny
    ids = ref["logp_sequences"]
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0

    def logps(m: nn.Module) -> torch.Tensor:
        return d1.per_token_logps(
            m, ids, completion_length=12, estimator=estimator, attention_mask=attention_mask,
            generator=torch.Generator().manual_seed(3), mask_token_id=MASK,
        )  # fmt: skip

    with torch.no_grad():
        assert torch.allclose(logps(model), logps(Realigned(model)), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_block_sampler_equals_the_realigned_model(dream_tiny, temperature: float) -> None:
    model, ref = dream_tiny
    settings = dict(
        gen_length=12, block_length=4, steps=6, temperature=temperature,
        attention_mask=ref["gen_prompt_attention_mask"], mask_token_id=MASK,
    )  # fmt: skip

    def run(m: nn.Module) -> torch.Tensor:
        return d1.generate(m, ref["gen_prompt"], generator=torch.Generator().manual_seed(0), **settings)

    out = run(model)
    assert torch.equal(out, run(Realigned(model))) and not (out == MASK).any()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_step_reads_the_block_predictions_one_column_left(dream_tiny, cache: str) -> None:
    """Right after a block's first (full) step, a cached step on the same tokens gives the same logits."""
    model, ref = dream_tiny
    prompt = ref["logp_sequences"][:, :14]
    x = torch.cat([prompt, torch.full((2, 12), MASK)], 1)
    decoder = _Decoder(
        model, MASK, None, x != MASK, 0.0, None, 0.0, "low_confidence", None, (), cache, "schedule", 0.9, 1.0
    )
    start, end = 18, 22
    x[:, 14:18] = ref["logp_sequences"][:, 14:18]  # the first block decoded
    with torch.no_grad():
        full, window, kv = decoder.step_logits(x, 0, start, end, None)
        cached, cached_window, _ = decoder.step_logits(x, 1, start, end, kv)
    assert window == cached_window == slice(start, end)
    assert torch.allclose(cached, full, atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_decoding_finishes_on_dream(dream_tiny, cache: str) -> None:
    model, ref = dream_tiny
    out = d1.generate(
        model, ref["gen_prompt"], attention_mask=ref["gen_prompt_attention_mask"], gen_length=12, block_length=4,
        steps=12, cache=cache, mask_token_id=MASK,
    )  # fmt: skip
    assert torch.equal(out[:, :10], ref["gen_prompt"]) and not (out == MASK).any()


def test_flag_read_through_wrappers_whose_own_config_is_not_the_models(dream_tiny) -> None:
    """A DeepSpeed engine has a `config` of its own (its settings) and the model under `module`."""

    class Engine(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module, self.config = module, {"train_batch_size": 8}

    assert logits_are_shifted(Engine(dream_tiny[0])) and logits_are_shifted(Engine(Engine(dream_tiny[0])))
