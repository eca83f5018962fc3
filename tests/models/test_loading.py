"""`d1.load_model` / `d1.load_tokenizer` on local folders, mask-token resolution, LoRA (targets, k-bit
preparation under DDP), 4-bit errors and the weights dtype of full fine-tuning."""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import d1
import d1.models.loading
import d1.rl.run
import d1.sft.run
from d1.models.loading import (
    apply_lora,
    check_lora_before_loading,
    linear_module_names,
    load_config,
    load_trainable_model,
    resolve_mask_token_id,
    training_dtype,
)
from d1.rl.config import GRPO_LORA_TARGETS
from d1.utils import sharded_launch
from tests.conftest import reference_path
from tests.rl.test_grpo_run import config_of as grpo_config
from tests.rl.test_grpo_run import grpo_argv
from tests.sft.test_sft_run import config_of, sft_argv


def test_load_tiny_model_and_tokenizer(tiny_model_dir) -> None:
    model = d1.load_model(tiny_model_dir, dtype="float32")
    tokenizer = d1.load_tokenizer(tiny_model_dir)
    ids = tokenizer(["12+3", "7"], padding=True, return_tensors="pt")
    logits = model(ids.input_ids, attention_mask=ids.attention_mask).logits
    assert logits.shape == (2, 4, len(tokenizer))
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert tokenizer.padding_side == "left"
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = plain.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert plain.decode(plain(text + "<answer>5</answer>").input_ids) == text + "<answer>5</answer>"


def test_load_official_layout_without_remote_code() -> None:
    model = d1.load_model(reference_path("llada-tiny"))
    assert type(model).__name__ == "LLaDAModelLM" and model.config.mask_token_id == 63


def test_mask_token_resolution_order() -> None:
    class Tok:
        mask_token_id = 5

    class Cfg:
        mask_token_id = 7

    assert resolve_mask_token_id(Tok(), Cfg()) == 5
    assert resolve_mask_token_id(None, Cfg()) == 7
    assert resolve_mask_token_id(Tok(), Cfg(), override=9) == 9
    with pytest.raises(ValueError, match="--mask_token_id"):
        resolve_mask_token_id(object(), object())


def test_model_without_mask_token_fails_clearly(tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / "nomask"
    d1.load_model(tiny_model_dir).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["mask_token_id"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--mask_token_id"):
        d1.load_model(folder)
    assert d1.load_model(folder, mask_token_id=3).config.mask_token_id == 3


def test_unreachable_hub_name_says_how_to_fix(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Download it first"):
        d1.load_model("GSAI-ML/LLaDA-8B-Instruct-not-cached")


def test_lora_wraps_and_checks_targets(tiny_model_dir) -> None:
    model = d1.load_model(tiny_model_dir)
    assert linear_module_names(model) == [
        "attn_out",
        "ff_out",
        "ff_proj",
        "k_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    with pytest.raises(ValueError, match=r"'query' matches no Linear layer.*q_proj"):
        apply_lora(model, target_modules=["query", "q_proj"])
    peft_model = apply_lora(model, r=4, lora_alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_4bit_on_cpu_is_a_clear_error(tiny_model_dir) -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        d1.load_model(tiny_model_dir, load_in_4bit=True)


def trainable_args(**overrides) -> SimpleNamespace:
    """The model options of `SFTConfig`/`DiffuGRPOConfig` that `load_trainable_model` reads."""
    values = dict(
        dtype="float32", trust_remote_code=False, load_in_4bit=False, lora=True, lora_r=4, lora_alpha=8,
        lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"], activation_checkpointing=True,
        deepspeed=None, fsdp=[],
    )  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def fake_4bit():
    """`load_model` that marks the model as 4-bit (bitsandbytes needs CUDA): the k-bit preparation path."""
    real = d1.models.loading.load_model

    def load(*args, **kwargs):
        model = real(*args, **kwargs)
        model.is_loaded_in_4bit = True
        return model

    return load


def _ddp_worker(rank: int, model_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a bounded wait: a rank that never arrives fails the test instead of holding the suite
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    d1.models.loading.load_model = fake_4bit()
    model = load_trainable_model(model_dir, trainable_args(), mask_token_id=None).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # the Trainer's choice
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(rank))
    for _ in range(2):
        ddp(ids).logits.float().square().mean().backward()
    # release DDP's reducer (it holds the process group) while the other rank is still there: tearing it down
    # after destroy_process_group once hung in ProcessGroupGloo's destructor after the peer had exited
    del ddp
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_kbit_lora_with_checkpointing_trains_under_ddp(tiny_model_dir) -> None:
    """The documented 8-GPU recipe (4-bit + LoRA + DDP with find_unused_parameters) on 2 gloo ranks: peft's
    k-bit preparation turned on reentrant checkpointing and died with "mark a variable ready only once"."""
    with socket.socket() as probe:  # a port free now (a fixed one may be held by another run)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = torch.multiprocessing.spawn(_ddp_worker, args=(str(tiny_model_dir), port), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank DDP run did not finish within 300 s")


def test_kbit_preparation_keeps_dtypes_and_checkpoints_only_when_asked(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(d1.models.loading, "load_model", fake_4bit())
    off = load_trainable_model(tiny_model_dir, trainable_args(dtype="bfloat16", activation_checkpointing=False), 3)
    base = off.get_base_model()
    assert not base.is_gradient_checkpointing
    frozen = [p for n, p in off.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)  # no float32 upcast
    on = load_trainable_model(tiny_model_dir, trainable_args(dtype="bfloat16"), 3).get_base_model()
    assert on.is_gradient_checkpointing
    blocks = on.model.transformer.blocks
    assert all(b._gradient_checkpointing_func.keywords == {"use_reentrant": False} for b in blocks)


def test_configs_make_checkpointing_non_reentrant(tmp_path) -> None:
    config = grpo_config(*grpo_argv(tmp_path, tmp_path, "--gradient_checkpointing", "true"))
    assert config.activation_checkpointing_kwargs == {"use_reentrant": False}
    sft = config_of("--output_dir", str(tmp_path), "--gradient_checkpointing_kwargs", '{"offload": false}')
    assert sft.activation_checkpointing_kwargs == {"offload": False, "use_reentrant": False}
    with pytest.raises(ValueError, match=r"activation_checkpointing_kwargs=.*use_reentrant"):
        config_of("--output_dir", str(tmp_path), "--gradient_checkpointing_kwargs", '{"use_reentrant": true}')


def lora_modules(model) -> set[str]:
    return {n.removeprefix("base_model.model.").split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}


def test_default_grpo_targets_adapt_every_block_projection_but_not_the_head(tiny_model_dir) -> None:
    model = d1.load_model(tiny_model_dir)
    block_linears = {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".blocks." in n
    }
    peft_model = apply_lora(model, r=4, lora_alpha=8, target_modules=GRPO_LORA_TARGETS)
    assert lora_modules(peft_model) == block_linears  # 7 per block; not model.transformer.ff_out
    assert len(block_linears) == 7 * model.config.n_layers
    # full names and patterns mix with leaf names
    named = apply_lora(d1.load_model(tiny_model_dir), r=4, target_modules=["model.transformer.blocks.0.q_proj", "v_proj"])
    assert lora_modules(named) == {"model.transformer.blocks.0.q_proj"} | {
        n for n in block_linears if n.endswith(".v_proj")
    }


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["q_proj", "ff_out"], r"'ff_out' matches \['model.transformer.ff_out'\], which the forward never calls.*"
         r"Fix: use the full-name pattern 'model"),
        (["model.transformer.ff_out"], "never calls.*remove it from the list"),
        (["query"], "'query' matches no Linear layer"),
        (["blocks"], "'blocks' matches no Linear layer"),
        ([r".*\.blocks\.0.*"], "not Linear layers"),
        (["q_proj["], "not a valid regular expression"),
    ],
)
def test_bad_lora_targets_are_refused_on_the_meta_device(tiny_model_dir, targets, message) -> None:
    with pytest.raises(ValueError, match=r"lora_target_modules=.*" + message):
        check_lora_before_loading(load_config(tiny_model_dir), trainable_args(lora_target_modules=targets))


@pytest.mark.parametrize("run", ["sft", "grpo"])
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_4bit_without_cuda_is_refused_before_loading(
    tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch, run
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model loaded before the 4-bit check")

    module = d1.sft.run if run == "sft" else d1.rl.run
    monkeypatch.setattr(module, "load_trainable_model", never)
    with pytest.raises(RuntimeError, match=r"load_in_4bit=True needs a CUDA GPU.*Drop --load_in_4bit"):
        if run == "sft":
            d1.sft.run.run_sft(config_of(*sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--lora", "--load_in_4bit")))
        else:
            d1.rl.run.run_grpo(grpo_config(*grpo_argv(tiny_model_dir, tmp_path, "--lora", "--load_in_4bit", "--beta", "0")))


def test_sharded_launch_reads_arguments_and_accelerate_env(tmp_path, monkeypatch) -> None:
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    assert sharded_launch(SimpleNamespace(deepspeed=None, fsdp=[])) is None
    assert sharded_launch(SimpleNamespace(deepspeed={"zero_optimization": {"stage": 3}}, fsdp=[])) == "deepspeed-zero3"
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert sharded_launch(SimpleNamespace(deepspeed=str(ds), fsdp=[])) == "deepspeed-zero2"
    assert sharded_launch(SimpleNamespace(deepspeed=None, fsdp=["full_shard"])) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharded_launch() == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # accelerate launch --config_file zero3.yaml
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert sharded_launch(SimpleNamespace(deepspeed=None, fsdp=[])) == "deepspeed-zero3"


def test_full_fine_tuning_dtype(monkeypatch) -> None:
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    full = {"lora": False}
    assert training_dtype(trainable_args(dtype="auto", **full)) == "float32"
    assert training_dtype(trainable_args(dtype="bfloat16")) == "bfloat16"  # LoRA: the base is frozen
    with pytest.raises(ValueError, match=r"dtype='bfloat16' with full fine-tuning.*--dtype auto or float32"):
        training_dtype(trainable_args(dtype="bfloat16", **full))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # DeepSpeed keeps float32 masters itself
    assert training_dtype(trainable_args(dtype="bfloat16", **full)) == "bfloat16"
    assert training_dtype(trainable_args(dtype="auto", **full)) == "auto"


def changed_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in before)
    return changed / sum(t.numel() for t in before.values())


def test_full_fine_tuning_keeps_small_updates(tiny_model_dir, arithmetic_jsonl, tmp_path) -> None:
    """A bf16 checkpoint, fully fine-tuned for 10 steps at lr 1e-5 (dtype auto): float32 masters change ~every
    weight. AdamW on the bf16 weights themselves (the old path) drops most of those updates."""
    bf16_dir = tmp_path / "bf16"
    d1.load_model(tiny_model_dir, dtype="bfloat16").save_pretrained(bf16_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            (bf16_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    before = load_file(bf16_dir / "model.safetensors")
    argv = sft_argv(bf16_dir, arithmetic_jsonl, tmp_path / "out", "--learning_rate", "1e-5", "--max_steps", "10",
                    "--lr_scheduler_type", "constant", "--dtype", "auto")  # fmt: skip
    d1.sft.run.run_sft(config_of(*argv))
    after = load_file(tmp_path / "out" / "run" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in after.values())
    ours = changed_fraction(before, after)
    # the old path, by hand: one AdamW step on the bf16 weights with unit gradients (the largest Adam step)
    weights = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    optimizer = torch.optim.AdamW(weights.values(), lr=1e-5, weight_decay=0.1)
    for w in weights.values():
        w.grad = torch.ones_like(w)
    optimizer.step()
    old = changed_fraction(before, {k: w.detach() for k, w in weights.items()})
    print(f"changed after 10 steps, float32 masters: {ours:.1%}; one bf16 AdamW step: {old:.1%}")
    assert ours > 0.99 and old < 0.5
