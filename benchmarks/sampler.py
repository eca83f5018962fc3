"""Sampler benchmark: LLaDA's loop-based reference `generate` against d1.generate's exact, cached and
parallel modes, in one process on the same model and prompts (interleaved repeats, median times).
`--family dream`: d1.generate's exact and fast modes against Fast-dLLM's cached Dream sampler
(`generate_dream_blocks`) on a Dream, the exact mode being the reference.

    python benchmarks/sampler.py [--quick] [--repeats N] [--model DIR ... --task sudoku|countdown]
    python benchmarks/sampler.py --device cuda --shape llada-8b   # on a GPU: LLaDA-8B's shape in bfloat16
    python benchmarks/sampler.py --overhead --repeats 30            # per-pass overhead and host syncs
    python benchmarks/sampler.py --family dream --trained-only \
        --model runs/demo/models/sft runs/demo/models/d1 --test-file runs/demo/data/test.csv \
        --accuracy-items 200 --gen-length 56 --block-length 28 --steps 28 14   # the demo's eval settings

Threshold decoding is measured two ways: as Fast-dLLM decodes (each block until it is done, however many
passes that takes; d1's `unmask="threshold"`) and capped at `steps / number of blocks` passes a block
(`max_block_steps`, each step then committing at least the block's masks left / steps left: d1's parallel
decoding before it followed Fast-dLLM). Speed is measured on a random-init native model of the family
(default shape: d_model 512, 6 layers, ~20M parameters, the tiny tokenizer's vocabulary; `--shape
llada-8b`: LLaDA-8B-Instruct's layer sizes and vocabulary), where the threshold almost never fires, and on
trained models of the family (`--model DIR ...`, e.g. the demo's SFT and d1 models) on the task's test
items in one batch: tokens/s, speed-up, forward passes, agreement with exact decoding's tokens and task
accuracy (`--trained-only` skips the random model). On the CPU times are this process's CPU seconds; on
CUDA, synchronised wall time.

`--overhead` measures the overhead-bound regime instead: a 1-layer model of tiny width, batch 1, a short
canvas, one thread; per mode of both families, CPU time per forward pass against LLaDA's loop on the same
model, and the host synchronisations per pass (calls that make the host wait for the device: `.item()`,
`int()`/`bool()` of a tensor, `.tolist()`, `nonzero`, boolean-mask indexing), counted by a torch function
mode during one decode, also on a 32-layer model of the same width.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from d1.diffusion.dream_block_sampling import generate_dream_blocks
from d1.diffusion.sampling import generate
from d1.models.dream import DreamConfig, DreamModel
from d1.models.llada import LLaDAConfig, LLaDAModelLM
from d1.models.presets import build_tokenizer

THRESHOLD = {"cache": "dual", "unmask": "threshold", "threshold": 0.9}
CAPPED = {**THRESHOLD, "max_block_steps": "steps / blocks"}
FAST_DREAM = "Fast-dLLM Dream"
"""Modes whose name starts so run `generate_dream_blocks`; the others `generate` (or the LLaDA loop)."""
MODES: dict[str, dict[str, dict]] = {
    "llada": {
        "reference (LLaDA loop)": {},
        "exact": {},
        "prefix cache": {"cache": "prefix"},
        "dual cache": {"cache": "dual"},
        "dual cache + threshold 0.9 (Fast-dLLM: blocks until done)": THRESHOLD,
        "dual cache + threshold 0.9, capped at steps / blocks": CAPPED,
    },
    "dream": {
        "exact": {},
        "dual cache": {"cache": "dual"},
        "dual cache + threshold 0.9 (blocks until done)": THRESHOLD,
        "dual cache + threshold 0.9, capped at steps / blocks": CAPPED,
        f"{FAST_DREAM}, dual cache": {"cache": "dual"},
        f"{FAST_DREAM}, dual cache + threshold 0.9": {"cache": "dual", "threshold": 0.9},
    },
}
"""Per family, the modes in table order; the first is the reference of speed-up and agreement."""


def mode_options(declared: dict, settings: dict) -> dict:
    """A mode's sampler options, the cap "steps / blocks" worked out for these `settings`."""
    options = dict(declared)
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
    "overhead": dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=64),
    "overhead-32": dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=32, mlp_hidden_size=64),
    "quick": dict(d_model=256, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=768),
    "20m": dict(d_model=512, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=1536),
    "llada-8b": dict(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464
    ),
    "dream-7b": dict(
        d_model=3584, n_heads=28, n_kv_heads=4, n_layers=28, mlp_hidden_size=18944, vocab_size=152064
    ),
}


def speed_model(shape: str, tokenizer, device: torch.device, family: str = "llada") -> torch.nn.Module:
    """A random-init native model of the family and `shape`, float32 on the CPU and bfloat16 on a GPU."""
    sizes = {"vocab_size": len(tokenizer), **SHAPES[shape]}
    ids = dict(
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "dream":
        model_class, config = DreamModel, DreamConfig(
            vocab_size=sizes["vocab_size"],
            hidden_size=sizes["d_model"],
            intermediate_size=sizes["mlp_hidden_size"],
            num_hidden_layers=sizes["n_layers"],
            num_attention_heads=sizes["n_heads"],
            num_key_value_heads=sizes["n_kv_heads"],
            bos_token_id=tokenizer.bos_token_id,
            **ids,
        )
    else:
        model_class, config = LLaDAModelLM, LLaDAConfig(**sizes, embedding_size=sizes["vocab_size"], **ids)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        return model_class(config).to(dtype).eval()


def clock(device: torch.device) -> float:
    """Process CPU seconds on the CPU (robust to other jobs); synchronised wall seconds on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def runner(
    model, prompt, attention_mask, mode: str, settings: dict, options: dict
) -> Callable[[], tuple[torch.Tensor, int]]:
    """A zero-argument call that decodes with `mode` (its sampler `options`) and returns (sequences,
    forward passes)."""

    def run() -> tuple[torch.Tensor, int]:
        if mode.startswith("reference"):
            counter = [0]
            out = llada_reference(
                model, prompt, attention_mask, mask_id=model.config.mask_token_id, counter=counter, **settings
            )
            return out, counter[0]
        stats: dict = {}
        sampler = generate_dream_blocks if mode.startswith(FAST_DREAM) else generate
        chosen = mode_options(options, settings)
        out = sampler(model, prompt, attention_mask=attention_mask, stats=stats, **settings, **chosen)
        return out, stats["forward_passes"]

    return run


def measure(model, prompt, attention_mask, settings: dict, repeats: int, modes: dict) -> dict[str, dict]:
    """Per mode of `modes`: median seconds (see `clock`), forward passes and the generated tokens, modes
    interleaved per repeat."""
    results: dict[str, dict] = {mode: {"times": []} for mode in modes}
    for _ in range(repeats):
        for mode, options in modes.items():
            start = clock(prompt.device)
            out, passes = runner(model, prompt, attention_mask, mode, settings, options)()
            results[mode]["times"].append(clock(prompt.device) - start)
            results[mode].update(tokens=out[:, prompt.shape[1] :], passes=passes)
    return results


def task_prompts(
    task_name: str, tokenizer, n: int, test_file: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Left-padded prompts for `n` test items of the task (the first n of `test_file`, else synthetic ones),
    their mask and the items."""
    from d1.tasks import get_task
    from d1.tasks.synthetic import make_dataset

    task = get_task(task_name)
    suffix = ".csv" if task_name == "sudoku" else ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        source = test_file or make_dataset(task_name, n, seed=0, output_path=Path(folder) / f"test{suffix}")
        items = task.load_test(source)[:n]
    texts = [task.build_prompt(tokenizer, item["question"], system_prompt="") for item in items]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"], items


def accuracy(
    model,
    tokenizer,
    task_name: str,
    n: int,
    settings: dict,
    modes: dict,
    test_file: str | None = None,
    repeats: int = 1,
) -> dict[str, dict]:
    """Per mode, on n test items in one batch: task accuracy (d1's units: questions, or cells for Sudoku),
    agreement % of the generated tokens with the exact mode's, forward passes and median seconds (see
    `clock`; modes interleaved per repeat) of the trained model."""
    from d1.tasks import get_task

    task = get_task(task_name)
    prompt, attention_mask, items = task_prompts(task_name, tokenizer, n, test_file)
    device = next(model.parameters()).device
    prompt, attention_mask = prompt.to(device), attention_mask.to(device)
    results = measure(model, prompt, attention_mask, settings, repeats, modes)
    exact = results["exact"]["tokens"]
    scores = {}
    for mode, r in results.items():
        texts = tokenizer.batch_decode(r["tokens"], skip_special_tokens=True)
        parsed = [
            task.parse(t, item["ground_truth"], item["question"])
            for t, item in zip(texts, items, strict=True)
        ]
        correct = 100 * sum(p.n_correct for p in parsed) / max(1, sum(p.n_total for p in parsed))
        scores[mode] = {
            "accuracy": correct,
            "agreement": 100 * (r["tokens"] == exact).float().mean().item(),
            "passes": r["passes"],
            "seconds": statistics.median(r["times"]),
        }
    return scores


HEADER = "| steps | mode | tokens/s | speed-up | forward passes | agreement % |\n|---|---|---|---|---|---|"
"""Speed on the random model against the reference (the family's first mode)."""
TRAINED_HEADER = (
    "| model | steps | mode | tokens/s | speed-up | forward passes | agreement with exact % | accuracy % |\n"
    "|---|---|---|---|---|---|---|---|"
)
"""Speed, passes, agreement with the exact mode's tokens and task accuracy of a trained model (`--model`)."""


def table_rows(steps: int, results: dict, batch: int, gen_length: int) -> str:
    """Markdown rows of one `steps` setting on the random model: speed against the reference (the first
    mode), forward passes, agreement of the tokens with the reference's."""
    ref = next(iter(results.values()))
    ref_time = statistics.median(ref["times"])
    lines = []
    for mode, r in results.items():
        seconds = statistics.median(r["times"])
        agree = 100 * (r["tokens"] == ref["tokens"]).float().mean().item()
        lines.append(
            f"| {steps} | {mode} | {batch * gen_length / seconds:.1f} | {ref_time / seconds:.2f}x | "
            f"{r['passes']} | {agree:.1f} |"
        )
    return "\n".join(lines)


def trained_rows(name: str, steps: int, scores: dict[str, dict], items: int, gen_length: int) -> str:
    """Markdown rows of one trained model and `steps` setting: tokens/s and speed-up against the family's
    first mode, forward passes, agreement with exact decoding, accuracy."""
    ref_seconds = next(iter(scores.values()))["seconds"]
    return "\n".join(
        f"| {name} | {steps} | {mode} | {items * gen_length / t['seconds']:.0f} | "
        f"{ref_seconds / t['seconds']:.2f}x | {t['passes']} | {t['agreement']:.1f} | {t['accuracy']:.1f} |"
        for mode, t in scores.items()
    )


SYNCS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "argwhere"})
"""Tensor calls that copy a device value to the host (a device->host synchronisation on a GPU)."""
MASK_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_", "masked_select"})
"""Indexing calls that synchronise when an index is a boolean mask (the result's shape depends on data)."""


def _has_mask(index: object) -> bool:
    """Whether an indexing argument is, or holds, a boolean tensor."""
    items = index if isinstance(index, tuple | list) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """Counts, by kind, the host synchronisations of the torch calls made while it is active (`SYNCS`, and
    `MASK_INDEXING` with a boolean index) without a device: the same calls synchronise on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.counts[name] += 1
        elif name in MASK_INDEXING and _has_mask(args[1:]):
            self.counts["mask indexing"] += 1
        return func(*args, **(kwargs or {}))


def overhead_rows(family: str, repeats: int) -> str:
    """Markdown rows for `family`: per mode (LLaDA's loop first), forward passes, CPU microseconds a pass,
    the ratio to the loop's, and host syncs a pass (with their kinds) on a 1-layer model, batch 1."""
    tokenizer = build_tokenizer(family)
    model = speed_model("overhead", tokenizer, torch.device("cpu"), family)
    prompt = torch.randint(4, len(tokenizer) - 4, (1, 16), generator=torch.Generator().manual_seed(0))
    settings = dict(steps=32, gen_length=32, block_length=8)
    modes = {"reference (LLaDA loop)": {}, **MODES[family]}
    measure(model, prompt, None, settings, 2, modes)
    results = measure(model, prompt, None, settings, repeats, modes)
    ref = results["reference (LLaDA loop)"]
    ref_pass = statistics.median(ref["times"]) / ref["passes"]
    deep = speed_model("overhead-32", tokenizer, torch.device("cpu"), family)
    lines = []
    for mode, options in modes.items():
        counts = []
        for counted in (model, deep):
            with SyncCounter() as counter:
                _, passes = runner(counted, prompt, None, mode, settings, options)()
            counts.append((counter.counts, passes))
        (kinds, passes), (deep_kinds, deep_passes) = counts
        per_pass = statistics.median(results[mode]["times"]) / passes
        by_kind = ", ".join(f"{k} {v / passes:.2g}" for k, v in sorted(kinds.items()))
        lines.append(
            f"| {family} | {mode} | {passes} | {1e6 * per_pass:.0f} | {per_pass / ref_pass:.2f} | "
            f"{sum(kinds.values()) / passes:.2f} | {by_kind} | {sum(deep_kinds.values()) / deep_passes:.2f} |"
        )
    return "\n".join(lines)


def overhead(repeats: int) -> None:
    """Print the overhead table (`--overhead`) of both families."""
    torch.set_num_threads(1)
    print(
        f"overhead-bound regime: random-init 1-layer models ({SHAPES['overhead']}), batch 1, prompt 16, "
        f"gen_length 32, block_length 8, steps 32; torch {torch.__version__}, CPU, 1 thread; median of "
        f"{repeats} interleaved repeat(s) of process CPU time"
    )
    print(
        "| family | mode | forward passes | us / pass | / LLaDA loop's | host syncs / pass | by kind "
        "| host syncs / pass, 32 layers |\n|---|---|---|---|---|---|---|---|"
    )
    for family in MODES:
        print(overhead_rows(family, repeats), flush=True)


def where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and lengths (a smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timing repeats (median)")
    parser.add_argument("--family", default="llada", choices=sorted(MODES), help="model family and its modes")
    parser.add_argument(
        "--model", nargs="+", default=[], help="trained model folders of --family, each timed in every mode"
    )
    parser.add_argument(
        "--trained-only", action="store_true", help="skip the random-init model's table (needs --model)"
    )
    parser.add_argument("--task", default="sudoku", choices=["sudoku", "countdown"])
    parser.add_argument("--accuracy-items", type=int, default=32)
    parser.add_argument("--test-file", help="the task's test file of the accuracy items (default: synthetic)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (1 keeps CPU times steady on a shared machine)"
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), help="model shape (default 20m; quick with --quick)"
    )
    parser.add_argument("--gen-length", type=int, help="generated tokens (default 256; 64 with --quick)")
    parser.add_argument("--block-length", type=int, help="block length (default 32; 16 with --quick)")
    parser.add_argument(
        "--steps", type=int, nargs="+", help="step settings, one table part each (default: gen_length, half)"
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="only the per-pass overhead and host syncs of every mode on 1-layer models (both families)",
    )
    args = parser.parse_args()
    if args.overhead:
        overhead(args.repeats)
        return
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    modes = MODES[args.family]
    tokenizer = build_tokenizer(args.family)
    batch, prompt_length = (4, 32) if args.quick else (8, 64)
    gen_length = args.gen_length or (64 if args.quick else 256)
    block_length = args.block_length or (16 if args.quick else 32)
    shape = args.shape or ("quick" if args.quick else "20m")
    if args.trained_only and not args.model:
        parser.error("--trained-only needs --model DIR [DIR ...]: the trained models to time")
    steps_settings = args.steps or (gen_length, gen_length // 2)
    warmup = dict(steps=block_length, gen_length=block_length, block_length=block_length)
    if not args.trained_only:
        model = speed_model(shape, tokenizer, device, args.family)
        printable = torch.tensor(
            tokenizer.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz0123456789 +-*="))
        )
        prompt = printable[
            torch.randint(
                0, len(printable), (batch, prompt_length), generator=torch.Generator().manual_seed(0)
            )
        ].to(device)
        measure(model, prompt, None, warmup, 1, modes)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"model: random-init native {args.family} ({shape}), {params:.1f}M parameters, "
            f"{next(model.parameters()).dtype}; batch {batch}, prompt {prompt_length}, gen_length "
            f"{gen_length}, block_length {block_length}; torch {torch.__version__}, {where(device)}; median of "
            f"{args.repeats} interleaved repeat(s) of "
            + ("synchronised wall time" if device.type == "cuda" else "process CPU time (all threads)")
        )
        print(HEADER, flush=True)
        for steps in steps_settings:
            settings = dict(steps=steps, gen_length=gen_length, block_length=block_length)
            results = measure(model, prompt, None, settings, args.repeats, modes)
            print(table_rows(steps, results, batch, gen_length), flush=True)
    if args.model:
        trained_table(args, modes, steps_settings, gen_length, block_length, device)


def trained_table(args, modes: dict, steps_settings, gen_length: int, block_length: int, device) -> None:
    """Print the trained models' table (`--model`): every mode on the first `--accuracy-items` test items."""
    from d1.models.loading import load_model, load_tokenizer

    print(
        f"trained models: {args.accuracy_items} {args.task} test items in one left-padded batch "
        f"({args.test_file or 'synthetic'}), greedy; gen_length {gen_length}, block_length {block_length}; "
        f"torch {torch.__version__}, {where(device)}; median of {args.repeats} interleaved repeat(s)"
    )
    print(TRAINED_HEADER, flush=True)
    for folder in args.model:
        trained = load_model(folder, dtype=torch.float32, device=device).eval()
        tokenizer = load_tokenizer(folder)
        name = "/".join(Path(folder).parts[-2:])
        warmup = dict(steps=block_length, gen_length=block_length, block_length=block_length)
        accuracy(trained, tokenizer, args.task, 4, warmup, modes, args.test_file)
        for steps in steps_settings:
            settings = dict(steps=steps, gen_length=gen_length, block_length=block_length)
            scores = accuracy(
                trained, tokenizer, args.task, args.accuracy_items, settings, modes, args.test_file,
                args.repeats,
            )  # fmt: skip
            print(trained_rows(name, steps, scores, args.accuracy_items, gen_length), flush=True)

if __name__ == "__main__":
    main()
