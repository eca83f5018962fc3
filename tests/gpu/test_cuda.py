"""The CUDA paths (skipped on machines without a GPU): float32 on the GPU agrees with the CPU; bfloat16
sampling, likelihood and the block KV cache stay close to float32; SDPA's flash and memory-efficient kernels
accept the model's attention; NF4 4-bit loading with LoRA trains; SFT, GRPO and eval run end to end."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from d1.diffusion.likelihood import per_token_logps
from d1.diffusion.sampling import generate
from d1.models.loading import load_model, load_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def batch(tokenizer, rows: int = 4, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Random printable prompts, the first two rows left-padded, on the GPU."""
    printable = torch.tensor(tokenizer.convert_tokens_to_ids(list("abcdefghij0123456789+=")))
    pick = torch.randint(0, len(printable), (rows, length), generator=torch.Generator().manual_seed(0))
    ids, mask = printable[pick], torch.ones(rows, length, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, :2] = 0
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    return ids.cuda(), mask.cuda()


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    fp32 = load_model(tiny_model_dir, dtype="float32", device="cuda").eval()
    bf16 = load_model(tiny_model_dir, dtype="bfloat16", device="cuda").eval()
    return tokenizer, fp32, bf16


@torch.no_grad()
def test_float32_on_gpu_matches_cpu(tiny_model_dir, models) -> None:
    tokenizer, fp32, _ = models
    cpu = load_model(tiny_model_dir, dtype="float32").eval()
    ids, mask = batch(tokenizer)
    gpu_logits = fp32(ids, attention_mask=mask).logits.cpu()
    torch.testing.assert_close(
        gpu_logits, cpu(ids.cpu(), attention_mask=mask.cpu()).logits, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@torch.no_grad()
def test_bfloat16_generation_keeps_the_invariants(models, cache) -> None:
    tokenizer, _, bf16 = models
    ids, mask = batch(tokenizer)
    out = generate(bf16, ids, attention_mask=mask, gen_length=32, block_length=8, steps=16, cache=cache)
    assert out.device.type == "cuda" and out.shape == (4, 56)
    assert torch.equal(out[:, :24], ids)
    assert not (out[:, 24:] == bf16.config.mask_token_id).any()


@torch.no_grad()
def test_bfloat16_likelihood_is_close_to_float32(models) -> None:
    tokenizer, fp32, bf16 = models
    ids, mask = batch(tokenizer)

    def logps(model):
        gen = torch.Generator(device="cuda").manual_seed(1)
        return per_token_logps(model, ids, completion_length=8, generator=gen, attention_mask=mask)

    low, high = logps(bf16), logps(fp32)
    assert low.dtype == torch.float32
    assert (low - high).abs().mean() < 0.05


@torch.no_grad()
def test_bfloat16_prefix_cache_step_matches_the_full_forward(models) -> None:
    tokenizer, _, bf16 = models
    ids, mask = batch(tokenizer)
    start = 16
    full = bf16(ids, attention_mask=mask, use_cache=True)
    prefix = tuple((k[:, :, :start], v[:, :, :start]) for k, v in full.cache)
    step = bf16(ids[:, start:], attention_mask=mask, cache=prefix)
    torch.testing.assert_close(step.logits, full.logits[:, start:], atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    "backend, padded", [(SDPBackend.FLASH_ATTENTION, False), (SDPBackend.EFFICIENT_ATTENTION, True)]
)
@torch.no_grad()
def test_fused_attention_kernels_accept_the_model(models, backend, padded) -> None:
    """Unpadded batches pass no mask, so flash attention can run; padded ones take the efficient kernel."""
    tokenizer, _, bf16 = models
    ids, mask = batch(tokenizer)
    mask = mask if padded else None
    with sdpa_kernel(backend):
        fused = bf16(ids, attention_mask=mask).logits
    with sdpa_kernel(SDPBackend.MATH):
        plain = bf16(ids, attention_mask=mask).logits
    torch.testing.assert_close(fused, plain, atol=0.05, rtol=0.02)


def test_4bit_lora_model_trains(tiny_model_dir) -> None:
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from d1.models.loading import apply_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="bfloat16", load_in_4bit=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model = apply_lora(model, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    ids, mask = batch(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        gen = torch.Generator(device="cuda").manual_seed(0)
        loss = -per_token_logps(model, ids, completion_length=8, generator=gen, attention_mask=mask).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bfloat16_sft_runs_on_gpu(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    from d1.sft.run import run_sft
    from tests.sft.test_sft_run import config_of, sft_argv

    argv = sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "12", "--dtype", "bfloat16")
    trainer = run_sft(config_of(*argv))
    assert next(trainer.model.parameters()).device.type == "cuda"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("four_bit", [False, True])
def test_lora_grpo_runs_on_gpu(tiny_model_dir, tmp_path, four_bit) -> None:
    if four_bit:
        pytest.importorskip("bitsandbytes")
    from d1.rl.run import run_grpo
    from tests.rl.test_grpo_run import config_of, grpo_argv

    argv = [a for a in grpo_argv(tiny_model_dir, tmp_path, "--max_steps", "2") if a != "--no-lora"]
    argv[argv.index("--dtype") + 1] = "bfloat16"
    extra = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    trainer = run_grpo(config_of(*argv, *extra, *(["--load_in_4bit", "true"] if four_bit else [])))
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 2 and all(k in logged[0] for k in ("reward", "kl", "time/rollout"))
    assert all(p.device.type == "cuda" for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_eval_runs_on_gpu(tiny_model_dir, tmp_path) -> None:
    from d1.evaluation.config import EvalConfig
    from d1.evaluation.runner import run_eval
    from d1.tasks.synthetic import make_dataset

    data = make_dataset("sudoku", 8, seed=0, output_path=tmp_path / "test.csv")
    path = run_eval(
        EvalConfig(
            model_path=str(tiny_model_dir),
            dataset="sudoku",
            data_path=str(data),
            gen_length=16,
            block_length=8,
            diffusion_steps=8,
            batch_size=4,
            output_dir=str(tmp_path / "eval"),
            system_prompt="",
            dtype="bfloat16",
            cache="prefix",
        )
    )
    assert path is not None
