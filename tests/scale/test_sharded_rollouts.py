"""Rollouts and validation with sharded weights (ZeRO-3, FSDP): which gathering runs for which launch,
equal forward passes on every rank (padded validation shards, synchronised step counts), and the refusal of
a frozen reference copy of sharded weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from torch import nn

from d1.rl.config import DiffuGRPOConfig
from d1.rl.sharding import (
    all_ranks_done,
    fsdp2_reshard_after_forward,
    gathered_for_generation,
    sharding_kind,
)
from d1.rl.trainer import padded_shard

PROBE = Path(__file__).with_name("sharded_probe.py")


def fake_accelerator(kind: DistributedType, zero_stage: int = 0, fsdp2: bool = False) -> SimpleNamespace:
    """The attributes of `accelerate.Accelerator` that the dispatch reads; unwrap_model tags its result."""
    return SimpleNamespace(
        distributed_type=kind,
        is_fsdp2=fsdp2,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)),
        unwrap_model=lambda m: ("unwrapped", m),
    )


@pytest.mark.parametrize(
    "accelerator, kind",
    [
        (fake_accelerator(DistributedType.NO), None),
        (fake_accelerator(DistributedType.MULTI_GPU), None),
        (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2), None),
        (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3), "zero3"),
        (fake_accelerator(DistributedType.FSDP, fsdp2=False), "fsdp1"),
        (fake_accelerator(DistributedType.FSDP, fsdp2=True), "fsdp2"),
    ],
)
def test_sharding_kind_per_launch(accelerator, kind) -> None:
    assert sharding_kind(accelerator) == kind


def test_fsdp2_restore_setting_is_the_plugins_or_fully_shards_default() -> None:
    plugin = SimpleNamespace(reshard_after_forward=False)
    assert fsdp2_reshard_after_forward(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))) is False
    assert fsdp2_reshard_after_forward(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None))) is True
    assert fsdp2_reshard_after_forward(SimpleNamespace(distributed_type=DistributedType.FSDP)) is True


def test_plain_launch_yields_the_unwrapped_model_unchanged() -> None:
    model = nn.Linear(2, 2)
    with gathered_for_generation(model, fake_accelerator(DistributedType.MULTI_GPU)) as unwrapped:
        assert unwrapped == ("unwrapped", model)
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_zero3_gathers_every_parameter_once_around_the_block(monkeypatch) -> None:
    events = []

    class GatheredParameters:  # deepspeed.zero's, recorded
        def __init__(self, params):
            self.params = params

        def __enter__(self):
            events.append(("gather", len(self.params)))

        def __exit__(self, *exc):
            events.append(("release", len(self.params)))

    fake = types.ModuleType("deepspeed")
    fake.zero = SimpleNamespace(GatheredParameters=GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with gathered_for_generation(model, fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3)) as unwrapped:
        events.append(("generate", unwrapped == ("unwrapped", model)))
    assert events == [("gather", 4), ("generate", True), ("release", 4)]


def test_fsdp1_summons_the_root_parameters(monkeypatch) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    calls = []

    class Summon:
        def __init__(self, module, **kwargs):
            calls.append((module, kwargs))

        def __enter__(self):
            return None

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", Summon)
    model = nn.Linear(2, 2)
    with gathered_for_generation(model, fake_accelerator(DistributedType.FSDP)) as wrapped:
        assert wrapped is model  # FSDP1: the wrapper runs the forward (its units gather)
    assert calls == [(model, {"recurse": False, "writeback": False})]


def test_all_ranks_done_without_a_process_group_is_the_local_flag() -> None:
    assert all_ranks_done(True) is True and all_ranks_done(False) is False


@pytest.mark.parametrize(
    "n, world, batch", [(10, 4, 2), (9, 2, 4), (8, 3, 3), (3, 4, 2), (1, 2, 1), (0, 2, 3), (7, 2, 1)]
)
def test_padded_shards_run_equal_batches_and_keep_the_unpadded_items(n, world, batch) -> None:
    items = [f"item{i}" for i in range(n)]
    shards = [padded_shard(items, rank, world, batch) for rank in range(world)]
    batches = {-(-len(shard) // batch) for shard, _ in shards}
    assert len(batches) == 1  # every rank runs the same number of generation batches
    kept = [shard[:real] for shard, real in shards]
    assert kept == [items[rank::world] for rank in range(world)]  # the real items, in order
    for shard, real in shards:
        unpadded = [shard[i : i + batch] for i in range(0, real, batch)]
        padded = [shard[i : i + batch] for i in range(0, len(shard), batch)]
        assert [b for b in padded if set(b) & set(shard[:real])] == unpadded  # padding never joins a real batch


def grpo_config(tmp_path: Path, **changes) -> DiffuGRPOConfig:
    options = {"output_dir": str(tmp_path), "lora": False, "beta": 0.04, "use_cpu": True, "report_to": "none"}
    return DiffuGRPOConfig(**{**options, **changes})


@pytest.mark.parametrize(
    "env, sharded",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "deepspeed-zero3"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "fsdp"),
    ],
)
def test_reference_copy_of_sharded_weights_is_refused_under_accelerate_launch(
    tmp_path, monkeypatch, env, sharded
) -> None:
    config = grpo_config(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    message = f"beta=0.04 with full fine-tuning \\(lora=False\\) under {sharded}.*--lora.*--beta 0"
    with pytest.raises(ValueError, match=message):
        config.validate(world_size=2)


def test_reference_copy_guard_reads_the_deepspeed_config_file(tmp_path, monkeypatch) -> None:
    config = grpo_config(tmp_path)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(ValueError, match="deepspeed-zero3"):
        config.validate(world_size=2)
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    config.validate(world_size=2)


@pytest.mark.parametrize(
    "changes, env",
    [
        ({}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
        ({"lora": True}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}),
        ({"beta": 0.0}, {"ACCELERATE_USE_FSDP": "true"}),
        ({}, {}),
    ],
)
def test_settings_without_a_sharded_reference_copy_pass(tmp_path, monkeypatch, changes, env) -> None:
    config = grpo_config(tmp_path, **changes)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config.validate(world_size=2)


@pytest.mark.slow
def test_fsdp2_generation_two_processes(tmp_path) -> None:
    """Real FSDP2 (gloo, CPU): equal forward passes with synchronised step counts, each rank's own tokens;
    generation inside `gathered_for_generation` makes no all-gather and equals the unsharded model's."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"sharded-{r}.json").read_text()) for r in (0, 1)]
    # alone, rank 0 is done (all EOS, early stop) after 1 forward pass (threshold) or its first block
    # (schedule); rank 1 needs all 8 steps
    for unmask, alone_passes in (("threshold", [1, 8]), ("schedule", [4, 8])):
        sync = [r[unmask] for r in ranks]
        assert [s["alone"]["forward_passes"] for s in sync] == alone_passes
        assert [s["synced"]["forward_passes"] for s in sync] == [8, 8]
        for s in sync:
            assert s["synced"]["tokens"] == s["alone"]["tokens"]
            assert s["generator_state_equal"]  # the joining passes drew no random numbers
        assert sync[0]["alone"]["tokens"][3:] == [1] * 8 and 1 not in sync[1]["alone"]["tokens"]
    for gather in (r["gather"] for r in ranks):
        assert gather["equal_inside"] and gather["equal_plain"]
        assert gather["unsharded_inside"] and gather["resharded_after"] and gather["grads"]
        assert gather["all_gathers_inside"] == 0
        # plain: the root unit gathers once (it keeps its weights after forward), each of the 2 blocks at
        # each of the 4 steps; so the root's setting was restored after the context
        assert gather["all_gathers_plain"] == 1 + 2 * 4
        # training afterwards: each block gathers in forward and again in backward (the root still holds its
        # weights from the plain run)
        assert gather["all_gathers_training_step"] == 2 + 2
    for kept in (r["gather_kept"] for r in ranks):  # blocks keep their weights after forward (the plugin's)
        assert kept["equal_inside"] and kept["equal_plain"]
        assert kept["unsharded_inside"] and kept["resharded_after"] and kept["grads"]
        assert kept["all_gathers_inside"] == 0
        # plain: every unit gathers once at the first step and keeps its weights (the setting was restored);
        # training afterwards gathers nothing
        assert kept["all_gathers_plain"] == 1 + 2
        assert kept["all_gathers_training_step"] == 0
