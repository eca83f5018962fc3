"""Generation with weights sharded over processes (DeepSpeed ZeRO-3, FSDP).

Under sharding every forward pass is a collective: each rank all-gathers the weights it lacks. Two things
follow for the diffusion sampler, which runs tens to hundreds of forward passes per rollout:
`gathered_for_generation` gathers the weights once for a whole rollout or validation instead of once per
denoising step, and `all_ranks_done` lets `d1.generate` keep every rank stepping until every rank is done,
so ranks whose step counts depend on their data (threshold/factor unmasking, early stop) never wait forever
in a collective that another rank skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn


def sharding_kind(accelerator: Any) -> str | None:
    """"zero3", "fsdp1" or "fsdp2" when the prepared model's weights are sharded over processes, else None."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "zero3" if accelerator.state.deepspeed_plugin.zero_stage == 3 else None
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp2" if accelerator.is_fsdp2 else "fsdp1"
    return None


def fsdp2_reshard_after_forward(accelerator: Any) -> bool:
    """The reshard-after-forward setting accelerate gave the FSDP2 units below the root (its FSDP plugin's
    `reshard_after_forward`, a bool under FSDP2); `fully_shard`'s own default, True, without a plugin."""
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    return True if plugin is None else bool(plugin.reshard_after_forward)


@contextmanager
def _fsdp2_unsharded(model: nn.Module, reshard_after_forward: bool) -> Iterator[None]:
    """Every FSDP2 unit of `model` unsharded, and kept so across forward passes, until exit; then resharded,
    the units below the root set back to `reshard_after_forward` (torch has no public getter for a unit's
    setting, so the caller passes the value it was sharded with). The root's setting is left alone: by
    torch's default it keeps its weights after forward, and setting it would change that for training.
    A unit accelerate shards with its own value (its output-head unit, for models with output embeddings;
    d1's LLaDA has none) also gets `reshard_after_forward` back: a cost in all-gathers, never in results."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:  # not prepared yet (e.g. evaluate before train)
        yield
        return
    inner = units[1:]  # modules() lists the root (the outermost unit) first
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in inner:
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)


@contextmanager
def gathered_for_generation(model: nn.Module, accelerator: Any) -> Iterator[nn.Module]:
    """The model to call for generation, with its sharded weights gathered for the whole block.

    ZeRO-3: `deepspeed.zero.GatheredParameters` over all parameters (DeepSpeed's own forward hooks stay in
    place, so a forward may still re-fetch; the step synchronisation keeps that safe). FSDP2: every unit
    unsharded and kept unsharded, then resharded with the units below the root set back to accelerate's
    `fsdp_plugin.reshard_after_forward`. FSDP1: the root's own parameters summoned (the wrapped layers
    gather in their forward; FSDP1 allows no forward inside a recursive summon). Otherwise:
    `unwrap_model(model)`.
    Every rank must enter and leave together (gathering is a collective).
    """
    kind = sharding_kind(accelerator)
    if kind == "zero3":
        import deepspeed  # only installed where ZeRO-3 runs

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield accelerator.unwrap_model(model)
    elif kind == "fsdp2":
        unwrapped = accelerator.unwrap_model(model)
        with _fsdp2_unsharded(unwrapped, fsdp2_reshard_after_forward(accelerator)):
            yield unwrapped
    elif kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False):
            yield model
    else:
        yield accelerator.unwrap_model(model)


def all_ranks_done(done: bool) -> bool:
    """Whether every process is done (one all-reduce); `done` itself without a process group. Passed to
    `d1.generate(sync_done=...)` so that a rank that finished keeps joining the others' forward passes."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return done
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    pending = torch.tensor([0 if done else 1], device=device)
    torch.distributed.all_reduce(pending)
    return int(pending.item()) == 0
