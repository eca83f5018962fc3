"""Dream's `diffusion_generate` against the official code's generations (../shared/reference/dream-tiny)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import d1
from d1.diffusion.dream_sampling import DreamSampling, diffusion_generate, sample_tokens
from d1.diffusion.logits import truncate_logits
from tests.conftest import reference_path


@pytest.fixture(scope="module")
def dream_tiny():
    folder = reference_path("dream-tiny")
    return d1.load_model(folder, dtype="float32"), load_file(folder / "reference_outputs.safetensors")


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
def test_matches_official_sequences_and_every_step(dream_tiny, alg: str, padded: bool) -> None:
    model, ref = dream_tiny
    out = model.diffusion_generate(
        ref["gen_prompt"],
        attention_mask=ref["gen_prompt_attention_mask"] if padded else None,
        max_new_tokens=16,
        steps=8,
        temperature=0.0,
        alg=alg,
        alg_temp=0.0,
        mask_token_id=151,
        output_history=True,
        return_dict_in_generate=True,
    )
    key = f"gen_{alg}_{'padded' if padded else 'unpadded'}"
    assert torch.equal(out.sequences, ref[key])
    assert torch.equal(torch.stack(out.history), ref[key + "_history"])


def test_hooks_see_each_step_and_can_force_tokens(dream_tiny) -> None:
    model, ref = dream_tiny
    seen: list[int | None] = []

    def force_first(step, x, logits):
        seen.append(step)
        x[:, 10] = 7  # the first generated position, pinned from the start
        return x

    def forbid_seven_elsewhere(step, x, logits):
        logits[:, 11:, 7] = float("-inf")
        return logits

    out = model.diffusion_generate(
        ref["gen_prompt"], max_new_tokens=6, steps=3, alg="maskgit_plus", mask_token_id=151,
        generation_tokens_hook_func=force_first, generation_logits_hook_func=forbid_seven_elsewhere,
    )  # fmt: skip
    assert seen == [None, 0, 1, 2]
    assert (out[:, 10] == 7).all() and not (out[:, 11:] == 7).any() and not (out == 151).any()


def test_origin_is_seeded_and_finishes(dream_tiny) -> None:
    model, ref = dream_tiny

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return diffusion_generate(
            model,
            ref["gen_prompt"],
            max_new_tokens=8,
            steps=4,
            temperature=1.0,
            mask_token_id=151,
            generator=g,
        )

    first = run(0)
    assert torch.equal(first, run(0)) and not (first == 151).any()
    assert torch.equal(first[:, :10], ref["gen_prompt"])


def test_truncation_keeps_the_nucleus_and_top_k() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = truncate_logits(logits, top_p=0.7, top_k=None) > torch.finfo(logits.dtype).min
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.8 reaches it: two tokens
    kept = truncate_logits(logits, top_p=None, top_k=3) > torch.finfo(logits.dtype).min
    assert kept.tolist() == [[True, True, True, False]]


def test_confidence_rules_by_hand() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    logits = probs.log()
    assert sample_tokens(logits, DreamSampling(alg="maskgit_plus"))[0].item() == pytest.approx(0.6)
    assert sample_tokens(logits, DreamSampling(alg="topk_margin"))[0].item() == pytest.approx(0.3)
    entropy = (probs * probs.log()).sum().item()
    assert sample_tokens(logits, DreamSampling(alg="entropy"))[0].item() == pytest.approx(entropy, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alg": "low_confidence"}, "alg='low_confidence' is unknown"),
        ({"steps": 0}, "steps=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": 0}, "top_k=0"),
        ({"block_length": 32}, r"unknown arguments \['block_length'\]"),
        ({"max_length": 5}, "max_new_tokens=-5"),
    ],
)
def test_bad_settings_refused_before_any_forward(dream_tiny, kwargs: dict, match: str) -> None:
    model, ref = dream_tiny
    with pytest.raises(ValueError, match=match):
        model.diffusion_generate(ref["gen_prompt"], **kwargs)


def test_sampled_positions_follow_dreams_schedule(dream_tiny) -> None:
    """With alg_temp and temperature > 0 every step still unmasks int(n * (1 - s/t)) tokens (all at the end)."""
    model, ref = dream_tiny
    steps, new = 5, 12

    def run(seed: int):
        return model.diffusion_generate(
            ref["gen_prompt"], max_new_tokens=new, steps=steps, alg="entropy", alg_temp=0.5, temperature=0.7,
            top_k=5, mask_token_id=151, output_history=True, return_dict_in_generate=True,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    out = run(0)
    times = torch.linspace(1, 1e-3, steps + 1)
    left, expected = new, []
    for i in range(steps):
        count = left if i == steps - 1 else int(left * (1 - times[i + 1] / times[i]))
        expected.append(count)
        left -= count
    masked = [new] + [int((h == 151).sum(1)[0]) for h in out.history]
    assert [masked[i] - masked[i + 1] for i in range(steps)] == expected and masked[-1] == 0
    assert torch.equal(out.sequences, run(0).sequences)
