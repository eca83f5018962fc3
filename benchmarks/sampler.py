"""Sampler benchmark: LLaDA's loop-based reference `generate` against d1.generate's exact, cached and
parallel modes, in one process on the same model and prompts (interleaved repeats, median times).

    python benchmarks/sampler.py [--quick] [--repeats N] [--model DIR --task sudoku|countdown]
    python benchmarks/sampler.py --device cuda --shape llada-8b   # on a GPU: LLaDA-8B's shape in bfloat16

Threshold decoding is measured two ways: as Fast-dLLM decodes (each block until it is done, however many
passes that takes; d1's `unmask="threshold"`) and capped at `steps / number of blocks` passes a block
(`max_block_steps`, each step then committing at least the block's masks left / steps left: d1's parallel
decoding before it followed Fast-dLLM, which the "dual cache + threshold 0.9" rows of docs/performance.md
measured). Speed is measured on a random-init native LLaDA (default shape: d_model 512, 6 layers, ~20M parameters, the
tiny tokenizer's vocabulary; `--shape llada-8b`: LLaDA-8B-Instruct's layer sizes and vocabulary). On the CPU
times are this process's CPU seconds; on CUDA, synchronised wall time. Accuracy needs a trained model
(`--model DIR`, e.g. from `d1 sft` on synthetic data); without one the column says so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from d1.diffusion.sampling import generate
from d1.models.llada import LLaDAConfig, LLaDAModelLM
from d1.models.presets import build_tokenizer

MODES: dict[str, dict] = {
    "reference (LLaDA loop)": {},
    "exact": {},
    "prefix cache": {"cache": "prefix"},
    "dual cache": {"cache": "dual"},
    "dual cache + threshold 0.9 (Fast-dLLM: blocks until done)": {
        "cache": "dual",
        "unmask": "threshold",
        "threshold": 0.9,
    },
    "dual cache + threshold 0.9, capped at steps / blocks": {
        "cache": "dual",
        "unmask": "threshold",
        "threshold": 0.9,
        "max_block_steps": "steps / blocks",
    },
}


def mode_options(mode: str, settings: dict) -> dict:
    """`generate`'s options for `mode`, the cap "steps / blocks" worked out for these `settings`."""
    options = dict(MODES[mode])
    if options.get("max_block_steps") == "steps / blocks":
        options["max_block_steps"] = settings["steps"] // (settings["gen_length"] // settings["block_length"])
    return options


@torch.no_grad()
def llada_reference(model, prompt, attention_mask, *, steps, gen_length, block_length, mask_id, counter):
    """LLaDA's `generate.py` as written (greedy, low-confidence remasking): per-row schedule and topk loops,
    float64 softmax over every position."""
    b = prompt.shape[0]
    x = torch.full((b, prompt.shape[1] + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, : prompt.shape[1]] = prompt.clone()
    if attention_mask is not None:
        ones = torch.ones(b, gen_length, dtype=attention_mask.dtype, device=prompt.device)
        attention_mask = torch.cat([attention_mask, ones], 1)
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        end = prompt.shape[1] + (num_block + 1) * block_length
        mask_num = (x[:, end - block_length : end] == mask_id).sum(dim=1)
        schedule = torch.zeros(b, steps, dtype=torch.long)
        for j in range(b):
            for i in range(steps):
                schedule[j, i] = mask_num[j] // steps + (1 if i < mask_num[j] % steps else 0)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x, attention_mask=attention_mask).logits
            counter[0] += 1
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(b):
                _, select = torch.topk(confidence[j], k=int(schedule[j, i]))
                transfer[j, select] = True
            x[transfer] = x0[transfer]
    return x


SHAPES: dict[str, dict] = {
    "quick": dict(d_model=256, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=768),
    "20m": dict(d_model=512, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=1536),
    "llada-8b": dict(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464
    ),
}


def speed_model(shape: str, tokenizer, device: torch.device) -> LLaDAModelLM:
    """A random-init native LLaDA of `shape`, float32 on the CPU and bfloat16 on a GPU."""
    sizes = {"vocab_size": len(tokenizer), **SHAPES[shape]}
    config = LLaDAConfig(
        **sizes,
        embedding_size=sizes["vocab_size"],
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        return LLaDAModelLM(config).to(dtype).eval()


def clock(device: torch.device) -> float:
    """Process CPU seconds on the CPU (robust to other jobs); synchronised wall seconds on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def runner(
    model, prompt, attention_mask, mode: str, settings: dict
) -> Callable[[], tuple[torch.Tensor, int]]:
    """A zero-argument call that decodes with `mode` and returns (sequences, forward passes)."""

    def run() -> tuple[torch.Tensor, int]:
        if mode.startswith("reference"):
            counter = [0]
            out = llada_reference(
                model, prompt, attention_mask, mask_id=model.config.mask_token_id, counter=counter, **settings
            )
            return out, counter[0]
        stats: dict = {}
        options = mode_options(mode, settings)
        out = generate(model, prompt, attention_mask=attention_mask, stats=stats, **settings, **options)
        return out, stats["forward_passes"]

    return run


def measure(model, prompt, attention_mask, settings: dict, repeats: int) -> dict[str, dict]:
    """Per mode: median seconds (see `clock`), forward passes and the generated tokens, modes interleaved
    per repeat."""
    results: dict[str, dict] = {mode: {"times": []} for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            start = clock(prompt.device)
            out, passes = runner(model, prompt, attention_mask, mode, settings)()
            results[mode]["times"].append(clock(prompt.device) - start)
            results[mode].update(tokens=out[:, prompt.shape[1] :], passes=passes)
    return results


def task_prompts(task_name: str, tokenizer, n: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Left-padded prompts for `n` synthetic test items of the task, their mask and the items."""
    from d1.tasks import get_task
    from d1.tasks.synthetic import make_dataset

    task = get_task(task_name)
    suffix = ".csv" if task_name == "sudoku" else ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        items = task.load_test(make_dataset(task_name, n, seed=0, output_path=Path(folder) / f"test{suffix}"))
    texts = [task.build_prompt(tokenizer, item["question"], system_prompt="") for item in items]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"], items


def accuracy(model, tokenizer, task_name: str, n: int, settings: dict) -> dict[str, float]:
    """Task accuracy (d1's units: questions, or cells for Sudoku) of every mode on synthetic test items."""
    from d1.tasks import get_task

    task = get_task(task_name)
    prompt, attention_mask, items = task_prompts(task_name, tokenizer, n)
    device = next(model.parameters()).device
    prompt, attention_mask = prompt.to(device), attention_mask.to(device)
    scores = {}
    for mode in MODES:
        out, _ = runner(model, prompt, attention_mask, mode, settings)()
        texts = tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)
        parsed = [
            task.parse(t, item["ground_truth"], item["question"])
            for t, item in zip(texts, items, strict=True)
        ]
        scores[mode] = 100 * sum(p.n_correct for p in parsed) / max(1, sum(p.n_total for p in parsed))
    return scores


HEADER = (
    "| steps | mode | tokens/s | speed-up | forward passes | agreement % | accuracy % |\n"
    "|---|---|---|---|---|---|---|"
)


def table_rows(
    steps: int, results: dict, scores: dict[str, float] | None, batch: int, gen_length: int
) -> str:
    """Markdown rows of one `steps` setting: speed against the reference, passes, agreement, accuracy."""
    ref = results["reference (LLaDA loop)"]
    ref_time = statistics.median(ref["times"])
    lines = []
    for mode, r in results.items():
        seconds = statistics.median(r["times"])
        agree = 100 * (r["tokens"] == ref["tokens"]).float().mean().item()
        acc = "n/a (pass --model)" if scores is None else f"{scores[mode]:.1f}"
        lines.append(
            f"| {steps} | {mode} | {batch * gen_length / seconds:.1f} | {ref_time / seconds:.2f}x | "
            f"{r['passes']} | {agree:.1f} | {acc} |"
        )
    return "\n".join(lines)


def where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and lengths (a smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timing repeats (median)")
    parser.add_argument("--model", help="a trained d1/LLaDA model folder for the accuracy column")
    parser.add_argument("--task", default="sudoku", choices=["sudoku", "countdown"])
    parser.add_argument("--accuracy-items", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu (2 threads) or cuda")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), help="model shape (default 20m; quick with --quick)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    tokenizer = build_tokenizer()
    batch, prompt_length = (4, 32) if args.quick else (8, 64)
    gen_length, block_length = (64, 16) if args.quick else (256, 32)
    shape = args.shape or ("quick" if args.quick else "20m")
    model = speed_model(shape, tokenizer, device)
    printable = torch.tensor(
        tokenizer.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz0123456789 +-*="))
    )
    prompt = printable[
        torch.randint(0, len(printable), (batch, prompt_length), generator=torch.Generator().manual_seed(0))
    ].to(device)
    trained = None
    if args.model:
        from d1.models.loading import load_model, load_tokenizer

        trained = (
            load_model(args.model, dtype=torch.float32, device=device).eval(),
            load_tokenizer(args.model),
        )
    warmup = dict(steps=block_length, gen_length=block_length, block_length=block_length)
    measure(model, prompt, None, warmup, 1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model: random-init native LLaDA ({shape}), {params:.1f}M parameters, {next(model.parameters()).dtype}; "
        f"batch {batch}, prompt {prompt_length}, gen_length {gen_length}, block_length {block_length}; torch "
        f"{torch.__version__}, {where(device)}; median of {args.repeats} interleaved repeat(s) of "
        + ("synchronised wall time" if device.type == "cuda" else "process CPU time (all threads)")
    )
    print(HEADER, flush=True)
    for steps in (gen_length, gen_length // 2):
        settings = dict(steps=steps, gen_length=gen_length, block_length=block_length)
        results = measure(model, prompt, None, settings, args.repeats)
        scores = None if trained is None else accuracy(*trained, args.task, args.accuracy_items, settings)
        print(table_rows(steps, results, scores, batch, gen_length), flush=True)


if __name__ == "__main__":
    main()
