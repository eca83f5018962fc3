"""LLaDA 2.x routed experts on CPU: the model's loop over experts (tokens gathered per expert) against
`torch.bmm` over per-expert groups padded to the largest, milliseconds per call and their ratio.

    python benchmarks/moe.py [--hidden 1024 --moe_intermediate 256 --experts 64 --top_k 8 --tokens 32 256]

One `LLaDA2MoeSparseMoeBlock` with random weights (LLaDA2.0-mini's router: 8 groups, 4 kept, top-8; smaller
matrices by default so it runs on a laptop) routes the same random tokens for both; the bmm variant gets the
experts' weights already stacked ([E, out, in], dFactory's fused layout) and is also timed with the stacking
the per-expert (Hub) layout would need on every call. Forward under no_grad (decoding) and forward + backward
(training). Both outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from d1.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeSparseMoeBlock


def stacked(block: LLaDA2MoeSparseMoeBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The experts' gate/up/down weights stacked to [E, out, in]."""
    return tuple(
        torch.stack([getattr(e, name).weight for e in block.experts])
        for name in ("gate_proj", "up_proj", "down_proj")
    )


def bmm_routed(
    tokens: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, fused: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """The routed sum with one batched matmul per projection over groups padded to the largest group."""
    gate, up, down = fused
    experts, top_k = gate.shape[0], chosen.shape[1]
    flat = chosen.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(flat.numel()) - starts[flat[order]]
    padded = tokens.new_zeros(experts, int(counts.max()), tokens.shape[1])
    padded = padded.index_put((flat[order], rank), tokens.index_select(0, order // top_k))
    hidden = F.silu(torch.bmm(padded, gate.transpose(1, 2))) * torch.bmm(padded, up.transpose(1, 2))
    out = torch.bmm(hidden, down.transpose(1, 2))[flat[order], rank]
    slots = out.index_select(0, order.argsort())
    combined = (slots.view(*chosen.shape, -1).to(weights.dtype) * weights.unsqueeze(-1)).sum(dim=1)
    return combined.to(tokens.dtype)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `call` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(block: LLaDA2MoeSparseMoeBlock, count: int, repeats: int, train: bool) -> dict[str, float]:
    """Milliseconds of the loop, of bmm on stacked weights and of bmm with the stacking, on `count` tokens."""
    generator = torch.Generator().manual_seed(count)
    tokens = torch.randn(count, block.gate.weight.shape[1], generator=generator, requires_grad=train)
    with torch.no_grad():
        chosen, weights, _ = block.gate(tokens)
    fused = tuple(weight.detach().requires_grad_(train) for weight in stacked(block))
    variants = {
        "loop": lambda: block.routed(tokens, chosen, weights),
        "bmm (stacked)": lambda: bmm_routed(tokens, chosen, weights, fused),
        "bmm + stacking": lambda: bmm_routed(tokens, chosen, weights, stacked(block)),
    }
    with torch.no_grad():
        reference = variants["loop"]()
        assert torch.allclose(variants["bmm (stacked)"](), reference, atol=1e-4), "bmm differs from the loop"

    def timed(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if train:
            return lambda: fn().sum().backward()
        return lambda: torch.no_grad()(fn)()

    return {name: median_ms(timed(fn), repeats) for name, fn in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (LLaDA2.0-mini: 2048)")
    parser.add_argument("--moe_intermediate", type=int, default=256, help="expert width (mini: 512)")
    parser.add_argument("--experts", type=int, default=64, help="routed experts (mini: 256)")
    parser.add_argument("--top_k", type=int, default=8, help="experts per token (mini: 8)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 256, 2048], help="tokens per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LLaDA2MoeConfig(
        hidden_size=args.hidden,
        moe_intermediate_size=args.moe_intermediate,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
    )
    block = LLaDA2MoeSparseMoeBlock(config)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, parameter.shape[-1] ** -0.5)
    print(
        f"hidden {args.hidden}, expert width {args.moe_intermediate}, {args.experts} experts, "
        f"top-{args.top_k}, {args.threads} thread(s), torch {torch.__version__}; ms per call "
        f"(median of {args.repeats})"
    )
    columns = (("tokens", 7), ("loop", 10), ("bmm", 10), ("bmm+stack", 11), ("bmm/loop", 10))
    columns += (("(b+s)/loop", 12),)
    print(f"{'pass':<9}" + "".join(f"{name:>{width}}" for name, width in columns))
    for train in (False, True):
        for count in args.tokens:
            ms = run(block, count, args.repeats, train)
            loop, bmm, both = ms["loop"], ms["bmm (stacked)"], ms["bmm + stacking"]
            kind = "fwd+bwd" if train else "forward"
            cells = f"{loop:>10.2f}{bmm:>10.2f}{both:>11.2f}{bmm / loop:>10.2f}{both / loop:>12.2f}"
            print(f"{kind:<9}{count:>7}{cells}")


if __name__ == "__main__":
    main()
