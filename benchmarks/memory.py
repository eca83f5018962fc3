"""Peak memory of one diffu-GRPO step's work: a rollout (LLaDA's block sampler at temperature > 0), the old
log-probs and one update (forward + backward of the per-token log-probs through the GRPO loss), for this
project's code and for a restatement of d1's (Gumbel noise in the model's dtype over [B, L, vocab], the
logits of every column then a slice), each variant in a fresh process.

    python benchmarks/memory.py [--quick]                     # CPU: LLaDA's vocabulary, small d_model
    python benchmarks/memory.py --device cuda --shape llada-8b  # GPU: LLaDA-8B's shape in bfloat16

On the CPU, peak = the kernel's resident-set high-water mark (VmHWM, reset after the model is built) less the
resident set at the start; on CUDA, torch's peak allocated memory less the allocation at the start. Both
variants share the model, prompts and seeds; before measuring, the script checks at temperature 0 that both
give the same tokens and log-probs. Ends with `peak memory ours/d1: R`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from d1.diffusion.likelihood import per_token_logps
from d1.diffusion.losses import grpo_loss
from d1.diffusion.masking import mask_prompt
from d1.diffusion.sampling import generate, num_transfer_tokens
from d1.models.llada import LLaDAConfig, LLaDAModelLM

VOCAB = 126464  # LLaDA's vocabulary (and embedding) size
MASK_ID = 126336  # LLaDA's [MASK]
SHAPES: dict[str, dict] = {
    "tiny": dict(d_model=16, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=32, vocab_size=64),
    "cpu": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=VOCAB),
    "llada-8b": dict(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=VOCAB
    ),
}
VARIANTS = ("ours", "d1")
# batch, prompt_length, gen_length, block_length, steps: d1's GRPO settings (generation batch 6, prompts up to
# 200 tokens, 256-token completions in blocks of 32, 128 steps) and smaller ones for the CPU
SETTINGS: dict[str, dict[str, int]] = {
    "d1": dict(batch=6, prompt_length=200, gen_length=256, block_length=32, steps=128),
    "cpu": dict(batch=2, prompt_length=96, gen_length=128, block_length=32, steps=32),
    "quick": dict(batch=2, prompt_length=48, gen_length=64, block_length=32, steps=8),
    "tiny": dict(batch=2, prompt_length=5, gen_length=8, block_length=4, steps=4),
}


def build_model(shape: str, device: torch.device) -> LLaDAModelLM:
    """A random-init native LLaDA of `shape`, float32 on the CPU and bfloat16 on a GPU."""
    sizes = SHAPES[shape]
    mask_id = min(MASK_ID, sizes["vocab_size"] - 1)
    config = LLaDAConfig(**sizes, embedding_size=sizes["vocab_size"], mask_token_id=mask_id, eos_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        return LLaDAModelLM(config).to(dtype)


def d1_gumbel_argmax(logits: torch.Tensor, temperature: float, dtype: torch.dtype, generator) -> torch.Tensor:
    """d1's Gumbel-max sampling: exp(logits) / (-log u)^temperature computed in `dtype` over every position."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(dtype)
    noise = torch.rand(logits.shape, dtype=dtype, generator=generator, device=logits.device)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


@torch.no_grad()
def d1_generate(model, prompt, *, gen_length, block_length, steps, temperature, dtype, generator):
    """d1's rollout sampler restated: logits of the whole sequence each step, Gumbel noise and the softmax
    confidence in `dtype` (d1 uses the model's dtype, bfloat16 in its runs) over [B, L, vocab]."""
    mask_id = model.config.mask_token_id
    b, prompt_length = prompt.shape
    x = torch.full((b, prompt_length + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :prompt_length] = prompt
    num_blocks = gen_length // block_length
    for block in range(num_blocks):
        end = prompt_length + (block + 1) * block_length
        schedule = num_transfer_tokens(x[:, end - block_length : end] == mask_id, steps // num_blocks)
        for step in range(steps // num_blocks):
            masked = x == mask_id
            logits = model(x).logits
            x0 = d1_gumbel_argmax(logits, temperature, dtype, generator)
            probs = F.softmax(logits.to(dtype), dim=-1)
            confidence = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            confidence[:, end:] = float("-inf")
            confidence = torch.where(masked, confidence, float("-inf"))
            for row in range(b):
                chosen = confidence[row].topk(int(schedule[row, step])).indices
                x[row, chosen] = x0[row, chosen]
    return x


def d1_logps(model, ids: torch.Tensor, completion_length: int, generator) -> torch.Tensor:
    """d1's `_get_per_token_logps` restated: the logits of every column, then the completion's slice."""
    mask_id = model.config.mask_token_id
    noisy = mask_prompt(ids, completion_length, mask_id, 0.15, generator)
    logits = model(noisy).logits[:, -completion_length:]
    targets = ids[:, -completion_length:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return -nll.view_as(targets).float()


def rollout(variant: str, model, prompt, settings: dict, temperature: float, seed: int) -> torch.Tensor:
    """Prompt + completion [B, P + gen_length] from `variant`'s sampler."""
    generator = torch.Generator(prompt.device).manual_seed(seed)
    lengths = {k: settings[k] for k in ("gen_length", "block_length", "steps")}
    if variant == "ours":
        return generate(model, prompt, temperature=temperature, generator=generator, **lengths)
    return d1_generate(
        model, prompt, temperature=temperature, dtype=torch.bfloat16, generator=generator, **lengths
    )


def logps(variant: str, model, ids: torch.Tensor, completion_length: int, seed: int) -> torch.Tensor:
    """Per-token log-probs [B, completion_length] of `variant`'s one-step estimate."""
    generator = torch.Generator(ids.device).manual_seed(seed)
    if variant == "ours":
        return per_token_logps(model, ids, completion_length=completion_length, generator=generator)
    return d1_logps(model, ids, completion_length, generator)


def grpo_step(variant: str, model, prompt: torch.Tensor, settings: dict, temperature: float) -> None:
    """One rollout, its old log-probs and one update's forward + backward through the GRPO loss."""
    ids = rollout(variant, model, prompt, settings, temperature, seed=1)
    completion_length = settings["gen_length"]
    with torch.no_grad():
        old = logps(variant, model, ids, completion_length, seed=2)
    new = logps(variant, model, ids, completion_length, seed=2)
    advantages = torch.linspace(-1, 1, ids.shape[0], device=ids.device)
    loss, _ = grpo_loss(new, old, None, advantages, torch.ones_like(new), beta=0.0)
    loss.backward()


def prompts(model, settings: dict, device: torch.device) -> torch.Tensor:
    """Random prompt ids [batch, prompt_length] below the mask id."""
    generator = torch.Generator().manual_seed(0)
    shape = (settings["batch"], settings["prompt_length"])
    return torch.randint(1, model.config.mask_token_id, shape, generator=generator).to(device)


def check_equal(shape: str, settings: dict, device: torch.device) -> tuple[bool, float]:
    """Whether both variants give the same tokens at temperature 0 (and the same log-probs of them, to the
    largest absolute difference returned); d1's confidence in float64 here, LLaDA's precision, as ours."""
    model = build_model(shape, device).eval()
    prompt = prompts(model, settings, device)
    lengths = {k: settings[k] for k in ("gen_length", "block_length", "steps")}
    ours = rollout("ours", model, prompt, settings, 0.0, seed=1)
    theirs = d1_generate(model, prompt, temperature=0.0, dtype=torch.float64, generator=None, **lengths)
    with torch.no_grad():
        a = logps("ours", model, ours, settings["gen_length"], seed=2)
        b = logps("d1", model, ours, settings["gen_length"], seed=2)
    return torch.equal(ours, theirs), float((a - b).abs().max())


def _status_kib(field: str) -> int:
    """A `/proc/self/status` field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; the CPU measurement needs Linux.")


def measure(variant: str, shape: str, settings: dict, device: torch.device, temperature: float) -> dict:
    """Peak MiB above the starting memory and wall seconds of `grpo_step` for `variant`, in this process."""
    model = build_model(shape, device).train()
    prompt = prompts(model, settings, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        start = _status_kib("VmRSS") * 1024
    began = time.perf_counter()
    grpo_step(variant, model, prompt, settings, temperature)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    return {"peak_mib": (peak - start) / 2**20, "seconds": time.perf_counter() - began}


def in_fresh_process(variant: str, args: argparse.Namespace) -> dict:
    """`measure` run by a new interpreter, so that one variant's peak cannot hide in another's."""
    argv = [sys.executable, __file__, "--measure", variant, "--device", args.device, "--shape", args.shape,
            "--settings", args.settings, "--temperature", str(args.temperature)]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (2 threads) or cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default: cpu, or llada-8b on cuda)")
    parser.add_argument("--settings", choices=sorted(SETTINGS), help="batch and lengths (default: cpu / d1)")
    parser.add_argument("--quick", action="store_true", help="the quick CPU settings (a few minutes)")
    parser.add_argument("--temperature", type=float, default=0.9, help="rollout temperature (d1: 0.9)")
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.shape = args.shape or ("llada-8b" if cuda else "cpu")
    args.settings = args.settings or ("quick" if args.quick else "d1" if cuda else "cpu")
    device = torch.device(args.device)
    if not cuda:
        torch.set_num_threads(2)
    settings = SETTINGS[args.settings]
    if args.measure:
        print(json.dumps(measure(args.measure, args.shape, settings, device, args.temperature)))
        return
    same_tokens, logp_diff = check_equal(args.shape, settings, device)
    results = {variant: in_fresh_process(variant, args) for variant in VARIANTS}
    where = torch.cuda.get_device_name(device) if cuda else "CPU, 2 threads"
    print(
        f"\nmodel: random-init native LLaDA, shape {args.shape} ({SHAPES[args.shape]}), "
        f"{'bfloat16' if cuda else 'float32'}; {settings}, temperature {args.temperature}; torch "
        f"{torch.__version__}, {where}; peak above the starting memory, one process per variant"
    )
    print(f"temperature 0: tokens identical {same_tokens}; max |log-prob difference| {logp_diff:.2e}")
    print("| variant | peak MiB | seconds |")
    print("|---|---|---|")
    for variant, result in results.items():
        print(f"| {variant} | {result['peak_mib']:.0f} | {result['seconds']:.1f} |")
    if not same_tokens or logp_diff > 1e-4:
        raise SystemExit("ours and d1's restatement disagree at temperature 0 (see above).")
    print(f"peak memory ours/d1: {results['ours']['peak_mib'] / results['d1']['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
