"""`d1 launch-check` against machines with and without GPUs/DeepSpeed, and `d1 merge` of a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from d1.cli.main import main
from d1.cluster import check_launch_config
from d1.models.loading import load_model
from d1.sft.run import run_sft
from tests.sft.test_sft_run import config_of, sft_argv

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@pytest.mark.parametrize(
    "name, gpus, deepspeed, message",
    [
        ("cpu.yaml", 0, False, None),
        ("single_gpu.yaml", 1, False, None),
        ("ddp_8gpu.yaml", 8, False, None),
        ("zero2_offload.yaml", 8, True, None),
        ("fsdp2.yaml", 8, False, None),
        ("ddp_multinode.yaml", 8, False, None),
        ("zero2_multinode.yaml", 8, True, None),
        ("single_gpu.yaml", 0, False, "1 GPU process"),
        ("ddp_8gpu.yaml", 4, False, "8 GPU process.*4 CUDA GPU"),
        ("zero2_offload.yaml", 8, False, "DeepSpeed, which is not installed"),
        ("zero3.yaml", 0, True, "DEEPSPEED needs CUDA GPUs"),
        ("fsdp2.yaml", 0, False, "FSDP needs CUDA GPUs"),
    ],
)
def test_launch_check(name, gpus, deepspeed, message) -> None:
    if message is None:
        assert check_launch_config(CONFIGS / name, gpus=gpus, deepspeed_installed=deepspeed).startswith("ok")
    else:
        with pytest.raises(ValueError, match=message) as err:
            check_launch_config(CONFIGS / name, gpus=gpus, deepspeed_installed=deepspeed)
        assert name in str(err.value) and "configs/accelerate/cpu.yaml" in str(err.value)


def test_launch_check_command(capsys) -> None:
    assert main(["launch-check", "--config_file", str(CONFIGS / "cpu.yaml"), "--num_processes", "4"]) == 0
    assert "4 CPU (gloo) process(es)" in capsys.readouterr().out
    assert main(["launch-check", "--config_file", str(CONFIGS / "nope.yaml")]) == 1


def test_merge_lora_adapter(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys) -> None:
    argv = [
        a
        for a in sft_argv(tiny_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "2")
        if a != "--no-lora"
    ]
    trainer = run_sft(config_of(*argv, "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"))
    adapter, merged = tmp_path / "run", tmp_path / "merged"
    assert (
        main(["merge", "--base", str(tiny_model_dir), "--adapter", str(adapter), "--output", str(merged)])
        == 0
    )
    assert json.loads((merged / "config.json").read_text())["mask_token_id"] is not None
    assert (merged / "tokenizer.json").exists() and not (merged / "adapter_config.json").exists()
    ids = torch.randint(0, 100, (2, 12))
    peft_model = trainer.model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = load_model(merged).eval()(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(base[k], v) for k, v in load_file(merged / "model.safetensors").items())


def test_merge_refuses_a_mismatched_base(tiny_model_dir, tmp_path, capsys) -> None:
    from d1.models.presets import init_model

    other = init_model("small", tmp_path / "small", seed=0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    from safetensors.torch import save_file

    prefix = "base_model.model.model.transformer.blocks.0."
    save_file(
        {
            f"{prefix}q_proj.lora_A.weight": torch.zeros(4, 64),
            f"{prefix}q_proj.lora_B.weight": torch.zeros(64, 4),
            f"{prefix}wq.lora_A.weight": torch.zeros(4, 64),
        },
        adapter / "adapter_model.safetensors",
    )
    out = tmp_path / "out"
    assert main(["merge", "--base", str(other), "--adapter", str(adapter), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "model.transformer.blocks.0.q_proj: adapter in_features 64, base 128" in err
    assert "model.transformer.blocks.0.wq: absent from the base" in err and str(tiny_model_dir) in err
    assert not out.exists()
