"""Test helper run under torchrun with 2 CPU processes (gloo): generation with FSDP2-sharded weights.

Writes OUTPUT/sharded-RANK.json with, per rank:
- "threshold", "schedule": a scripted model whose per-rank confidence makes rank 0 finish early (early stop)
  and rank 1 need every step; its weights are FSDP2-sharded, so each forward is a collective.
  Forward passes and tokens of the single-process run (no sharding, no synchronisation) and of the run with
  `sync_done=all_ranks_done`, and whether the sampling generator ended in the same state.
- "gather": a tiny native LLaDA (2 blocks, each block and the root an FSDP2 unit), generation under
  `gathered_for_generation` (first) and plain (after it) vs the same weights unsharded; all-gathers counted
  during each generation and during a training forward + backward afterwards. No FSDP plugin: the blocks
  reshard after forward (fully_shard's default).
- "gather_kept": the same with blocks that keep their weights after forward, as accelerate's FSDP plugin says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.fsdp import fully_shard

from d1.diffusion.sampling import generate
from d1.models.presets import build_model, build_tokenizer
from d1.rl.sharding import all_ranks_done, gathered_for_generation

MASK, EOS, VOCAB = 0, 1, 8
FSDP2 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True, unwrap_model=lambda m: m)


class Scripted(nn.Module):
    """A row whose first prompt token is 2 predicts EOS with certainty everywhere; any other row spreads
    its probability over tokens 3..7 (below any threshold: one token a step). Counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS)
        self.weight = nn.Parameter(torch.zeros(4, VOCAB))  # sharded: every forward all-gathers it
        self.calls = 0

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.calls += 1
        confident = (ids[:, :1] == 2).unsqueeze(-1)
        spread = torch.tensor([-9.0, -9.0, -9.0, 0.3, 0.2, 0.1, 0.0, 0.1])
        certain = torch.full((VOCAB,), -30.0).index_fill(0, torch.tensor([EOS]), 30.0)
        logits = torch.where(confident, certain, spread).expand(*ids.shape, VOCAB).clone()
        return SimpleNamespace(logits=logits + self.weight.sum(0))


def decode(model: nn.Module, prompt: torch.Tensor, **options) -> tuple[list[int], int, torch.Tensor]:
    """Tokens, forward passes and the final generator state of one sampled run with early stop."""
    generator = torch.Generator().manual_seed(7)
    model.calls = 0
    out = generate(
        model, prompt, gen_length=8, block_length=4, steps=8, temperature=0.7, early_stop=True,
        generator=generator, **options,
    )  # fmt: skip
    return out[0].tolist(), model.calls, generator.get_state()


def sync_case(rank: int, unmask: str) -> dict:
    """threshold: rank 0 finishes after its first step; schedule (LLaDA's exact sampler, which draws noise
    over the whole sequence every step): after its first block."""
    prompt = torch.tensor([[2 if rank == 0 else 4, 5, 6]])
    model = Scripted()
    alone_tokens, alone_passes, alone_state = decode(model, prompt, unmask=unmask)
    fully_shard(model)
    tokens, passes, state = decode(model, prompt, unmask=unmask, sync_done=all_ranks_done)
    return {
        "alone": {"tokens": alone_tokens, "forward_passes": alone_passes},
        "synced": {"tokens": tokens, "forward_passes": passes},
        "generator_state_equal": bool(torch.equal(state, alone_state)),
    }


def count_all_gathers(run) -> tuple[object, int]:
    """`run()`'s result and the number of all-gathers it made (FSDP2 gathers with `all_gather_single`)."""
    real, counter = dist.all_gather_single, [0]

    def counting(*args, **kwargs):
        counter[0] += 1
        return real(*args, **kwargs)

    dist.all_gather_single = counting
    try:
        return run(), counter[0]
    finally:
        dist.all_gather_single = real


def fsdp2_launch(reshard_after_forward: bool) -> SimpleNamespace:
    """The attributes of an FSDP2 `accelerate.Accelerator` that `gathered_for_generation` reads."""
    plugin = SimpleNamespace(reshard_after_forward=reshard_after_forward)
    return SimpleNamespace(**vars(FSDP2), state=SimpleNamespace(fsdp_plugin=plugin))


def gather_case(rank: int, accelerator: SimpleNamespace, reshard_after_forward: bool | None) -> dict:
    """Blocks sharded with `reshard_after_forward` (None: fully_shard's default), the root with its own."""
    tokenizer = build_tokenizer()
    model = build_model("tiny", tokenizer, seed=0).eval()
    prompt = torch.tensor([tokenizer.encode(f"rank {rank}: 12+3=")])
    options = {"gen_length": 8, "block_length": 4, "steps": 4}
    expected = generate(model, prompt, **options)
    for block in model.model.transformer.blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward)
    fully_shard(model)
    with gathered_for_generation(model, accelerator) as unwrapped:  # the first forward ever, as in training
        inside, gathers_inside = count_all_gathers(lambda: generate(unwrapped, prompt, **options))
        unsharded = all(type(p) is nn.Parameter for p in model.parameters())
    resharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
    per_forward, gathers_plain = count_all_gathers(lambda: generate(model, prompt, **options))
    model.train()
    _, gathers_training = count_all_gathers(lambda: model(prompt).logits.sum().backward())
    return {
        "equal_plain": bool(torch.equal(per_forward, expected)),
        "equal_inside": bool(torch.equal(inside, expected)),
        "all_gathers_plain": gathers_plain,
        "all_gathers_inside": gathers_inside,
        "unsharded_inside": unsharded,
        "resharded_after": resharded,
        "all_gathers_training_step": gathers_training,
        "grads": all(p.grad is not None for p in model.parameters()),
    }


def main(output: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {unmask: sync_case(rank, unmask) for unmask in ("threshold", "schedule")}
    result["gather"] = gather_case(rank, FSDP2, None)
    result["gather_kept"] = gather_case(rank, fsdp2_launch(False), False)
    (Path(output) / f"sharded-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
