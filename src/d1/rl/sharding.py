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


@contextmanager
def _fsdp2_unsharded(model: nn.Module) -> Iterator[None]:
    """Every FSDP2 unit of `model` unsharded, and kept so across forward passes, until exit; then resharded
    with each unit's own reshard-after-forward setting back. torch has no public getter for that setting,
    so it is saved from the param groups (what `set_reshard_after_forward` writes)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:  # not prepared yet (e.g. evaluate before train)
        yield
        return
    units[0]._get_fsdp_state()._lazy_init()  # the root settles its own setting at its first forward
    groups = [g for unit in units for g in unit._get_fsdp_state()._fsdp_param_groups]
    saved = [g.post_forward_mesh_info for g in groups]
    for group in groups:
        group.post_forward_mesh_info = None  # no reshard after forward
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for group, info in zip(groups, saved, strict=True):
            group.post_forward_mesh_info = info


@contextmanager
def gathered_for_generation(model: nn.Module, accelerator: Any) -> Iterator[nn.Module]:
    """The model to call for generation, with its sharded weights gathered for the whole block.

    ZeRO-3: `deepspeed.zero.GatheredParameters` over all parameters (DeepSpeed's own forward hooks stay in
    place, so a forward may still re-fetch; the step synchronisation keeps that safe). FSDP2: every unit
    unsharded and kept unsharded. FSDP1: the root's own parameters summoned (the wrapped layers gather in
    their forward; FSDP1 allows no forward inside a recursive summon). Otherwise: `unwrap_model(model)`.
    Every rank must enter and leave together (gathering is a collective).
    """
    kind = sharding_kind(accelerator)
    if kind == "zero3":
        import deepspeed  # only installed where ZeRO-3 runs

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield accelerator.unwrap_model(model)
    elif kind == "fsdp2":
        unwrapped = accelerator.unwrap_model(model)
        with _fsdp2_unsharded(unwrapped):
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
