"""Block diffusion sampler benchmark (LLaDA 2.x): the official loop (one prompt at a time, the whole prefix
recomputed at every step: dFactory's `generate`) against d1's batched sampler without and with the finished-block
KV cache, in one process on the same random model and prompts (interleaved repeats, median times).

    python benchmarks/block_sampler.py [--quick] [--repeats N]
    python benchmarks/block_sampler.py --device cuda --shape llada2-mini   # on a GPU: LLaDA2.0-mini's shape, bf16

The model is a random-init native LLaDA 2.x whose head is sharpened (weights x `--sharpen`) so that confidences
spread as a trained model's do and the threshold fires; agreement is with the official loop's tokens (the
cache is exact, so it must be 100%). On the CPU times are this process's CPU seconds; on CUDA, synchronised
wall time, and the peak memory of each mode is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from d1.diffusion.block_diffusion import BlockDiffusionSampling, generate_blocks
from d1.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM

SHAPES: dict[str, dict] = {
    "quick": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=2,
                  intermediate_size=256, moe_intermediate_size=64, num_experts=16, num_experts_per_tok=2, n_group=4,
                  topk_group=2, vocab_size=1024),
    "small": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_hidden_layers=4,
                  intermediate_size=1024, moe_intermediate_size=128, num_experts=32, num_experts_per_tok=4, n_group=4,
                  topk_group=2, vocab_size=4096),
    "llada2-mini": {},  # LLaDA2MoeConfig's defaults are LLaDA2.0-mini's config.json (16B, 1.4B active)
}  # fmt: skip


def build_model(shape: str, device: torch.device, sharpen: float) -> torch.nn.Module:
    """A random LLaDA 2.x of `shape` (float32 on the CPU, bfloat16 on a GPU) with its head scaled by `sharpen`."""
    sizes = SHAPES[shape]
    ids = {}
    if "vocab_size" in sizes:  # the toy shapes: special ids at the end of their vocabulary
        vocab = sizes["vocab_size"]
        ids = {"mask_token_id": vocab - 1, "eos_token_id": vocab - 2, "pad_token_id": vocab - 2}
    config = LLaDA2MoeConfig(**sizes, **ids, max_position_embeddings=4096, rope_theta=10000.0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        model = LLaDA2MoeModelLM(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def clock(device: torch.device) -> float:
    """Process CPU seconds on the CPU (robust to other jobs); synchronised wall seconds on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def modes(settings: BlockDiffusionSampling) -> dict[str, Callable]:
    """The modes in table order; the first (the official loop) is the reference."""
    uncached = BlockDiffusionSampling(**{**settings.__dict__, "cache": False})

    def official(model, prompts, mask, stats):
        outs, passes = [], 0
        for row, keep in zip(prompts, mask.bool(), strict=True):
            one: dict = {}
            outs.append(generate_blocks(model, row[keep][None], uncached, mask_token_id=model.config.mask_token_id,
                                        eos_token_id=None, stats=one)[0, keep.sum():])  # fmt: skip
            passes += one["forward_passes"]
        stats["forward_passes"] = passes
        return torch.stack(outs)

    def batched(chosen: BlockDiffusionSampling):
        def run(model, prompts, mask, stats):
            out = generate_blocks(model, prompts, chosen, mask_token_id=model.config.mask_token_id, eos_token_id=None,
                                  attention_mask=mask, stats=stats)  # fmt: skip
            return out[:, prompts.shape[1]:]
        return run

    return {"official loop (batch 1, prefix recomputed)": official, "batched, no cache": batched(uncached),
            "batched, finished blocks cached": batched(settings)}  # fmt: skip


def measure(model, prompts, mask, settings: BlockDiffusionSampling, repeats: int) -> dict[str, dict]:
    """Median time, forward passes, tokens and (CUDA) peak memory of every mode, interleaved per repeat."""
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for name, run in modes(settings).items():
            if prompts.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            stats: dict = {}
            start = clock(prompts.device)
            tokens = run(model, prompts, mask, stats)
            entry = results.setdefault(name, {"times": []})
            entry["times"].append(clock(prompts.device) - start)
            entry.update(tokens=tokens, passes=stats["forward_passes"])
            if prompts.device.type == "cuda":
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=45, help="Longest prompt; the others are shorter.")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.95, 0.9])
    parser.add_argument("--sharpen", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shape quick, 32 tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.gen_length, args.block_length, args.repeats, args.batch = "quick", 32, 8, 1, 2
    device = torch.device(args.device)
    model = build_model(args.shape, device, args.sharpen)
    generator = torch.Generator().manual_seed(0)
    lengths = [args.prompt_length - 7 * i for i in range(args.batch)]
    prompts = torch.zeros(args.batch, args.prompt_length, dtype=torch.long)
    mask = torch.zeros_like(prompts)
    for row, length in enumerate(lengths):
        prompts[row, -length:] = torch.randint(0, model.config.vocab_size - 3, (length,), generator=generator)
        mask[row, -length:] = 1
    prompts, mask = prompts.to(device), mask.to(device)
    active = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"LLaDA 2.x {args.shape} ({active:.1f}M parameters), {device.type}, batch {args.batch}, prompts {lengths}, "
          f"gen_length {args.gen_length}, block {args.block_length}, steps per block {args.block_length}")  # fmt: skip
    print("\n| threshold | mode | tokens/s | speed-up | forward passes | agreement % | peak GiB |\n|---|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        settings = BlockDiffusionSampling(gen_length=args.gen_length, block_length=args.block_length,
                                          steps=args.block_length, threshold=threshold)  # fmt: skip
        results = measure(model, prompts, mask, settings, args.repeats)
        ref = next(iter(results.values()))
        ref_time = statistics.median(ref["times"])
        for name, r in results.items():
            seconds = statistics.median(r["times"])
            agree = 100 * (r["tokens"] == ref["tokens"]).float().mean().item()
            peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "n/a"
            label = "none (quota)" if threshold >= 1 else threshold
            print(f"| {label} | {name} | {args.batch * args.gen_length / seconds:.1f} | {ref_time / seconds:.2f}x "
                  f"| {r['passes']} | {agree:.1f} | {peak} |")  # fmt: skip


if __name__ == "__main__":
    main()
