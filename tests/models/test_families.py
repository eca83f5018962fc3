"""The family table: tiny presets per family, the unknown-model_type and missing-mask-token errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

import d1
from d1.cli.main import main
from d1.models.dream import DreamModel
from d1.models.families import FAMILIES, family
from d1.models.llada import LLaDAModelLM
from d1.models.llada2 import LLaDA2MoeModelLM
from d1.models.loading import load_model
from d1.models.presets import init_model
from d1.models.sdar import SDARForCausalLM
from tests.conftest import reference_path


def test_every_family_is_registered_and_flags_its_alignment() -> None:
    for spec in FAMILIES.values():
        assert type(AutoConfig.for_model(spec.model_type)) is spec.config_class
    assert FAMILIES["dream"].logits_shifted and not FAMILIES["llada"].logits_shifted
    block = {name for name, spec in FAMILIES.items() if getattr(spec.config_class, "block_diffusion", False)}
    assert block == {"llada2", "sdar"} and {FAMILIES[name].sampler for name in block} == {"block_diffusion"}
    with pytest.raises(ValueError, match=r"--family 'rwkv' is unknown; choose one of \['dream', 'llada', 'llada2', 'sdar'\]"):
        family("rwkv")


@pytest.mark.parametrize(
    ("name", "cls", "chat"),
    [
        ("dream", DreamModel, "<|im_start|>"),
        ("llada", LLaDAModelLM, "<|start_header_id|>"),
        ("llada2", LLaDA2MoeModelLM, "<role>"),
        ("sdar", SDARForCausalLM, "<|im_start|>"),
    ],
)
def test_init_model_cli_writes_a_loadable_tiny_model(
    tmp_path: Path, capsys, name: str, cls: type, chat: str
) -> None:
    assert main(["init-model", "--family", name, "--preset", "tiny", "--output", str(tmp_path)]) == 0
    assert f"tiny {name} model" in capsys.readouterr().out
    model, tokenizer = d1.load_model(tmp_path), d1.load_tokenizer(tmp_path)
    assert isinstance(model, cls) and model.config.mask_token_id == tokenizer.mask_token_id
    assert tokenizer.mask_token == FAMILIES[name].mask_token
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat in prompt and tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    with torch.no_grad():
        assert model(torch.tensor([tokenizer(prompt)["input_ids"]])).logits.shape[-1] == len(tokenizer)


def test_tiny_llada_config_is_unchanged_by_the_family_table(tmp_path: Path) -> None:
    config = json.loads((init_model("tiny", tmp_path) / "config.json").read_text())
    expected = {"d_model": 64, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 192, "vocab_size": 109}
    assert {k: config[k] for k in expected} == expected
    assert (
        config["embedding_size"] == 109
        and config["max_sequence_length"] == 4096
        and config["rope_theta"] == 10000.0
    )


@pytest.mark.parametrize("auto_map", [False, True])
def test_unknown_model_type_lists_families_and_remote_code(tmp_path: Path, auto_map: bool) -> None:
    config = {"model_type": "rwkv7", "hidden_size": 8}
    if auto_map:
        config["auto_map"] = {"AutoConfig": "configuration_rwkv7.RWKV7Config"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"model_type='rwkv7'.*llada \(model_type 'llada'.*dream \(model_type 'Dream'.*trust_remote_code=True",
    ):
        load_model(tmp_path)


def test_dream_checkpoint_without_mask_token_refused_before_weights(tmp_path: Path) -> None:
    config = json.loads(reference_path("dream-tiny", "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))  # no weights: the error must come first
    with pytest.raises(
        ValueError, match=r"No mask token.*--mask_token_id ID \(dream checkpoints use <\|mask\|> = 151666\)"
    ):
        load_model(tmp_path)


def test_dream_mask_token_from_override(tmp_path: Path) -> None:
    folder = reference_path("dream-tiny")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path, mask_token_id=151).config.mask_token_id == 151


def test_lora_sft_then_merge_per_family(
    family_model_dir: Path, arithmetic_jsonl: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from d1.sft.run import run_sft
    from tests.sft.test_sft_run import config_of, sft_argv

    argv = [
        a
        for a in sft_argv(family_model_dir, arithmetic_jsonl, tmp_path, "--max_steps", "2")
        if a != "--no-lora"
    ]
    run_sft(config_of(*argv, "--lora_r", "4", "--lora_alpha", "8"))
    adapter, merged_dir = tmp_path / "run", tmp_path / "merged"
    assert (
        main(
            ["merge", "--base", str(family_model_dir), "--adapter", str(adapter), "--output", str(merged_dir)]
        )
        == 0
    )
    ids = torch.arange(3, 23)[None]
    with torch.no_grad():
        merged = load_model(merged_dir)(ids).logits
        adapted = PeftModel.from_pretrained(load_model(family_model_dir), adapter)(ids).logits
        base = load_model(family_model_dir)(ids).logits
    assert type(load_model(merged_dir)) is type(load_model(family_model_dir))
    assert torch.allclose(merged, adapted, atol=1e-5) and not torch.allclose(merged, base, atol=1e-5)


def test_empty_lora_targets_become_the_family_default() -> None:
    from types import SimpleNamespace

    from transformers import Qwen2Config

    from d1.models.loading import lora_targets

    dream = AutoConfig.for_model("Dream", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    default, chosen = SimpleNamespace(lora_target_modules=[]), SimpleNamespace(lora_target_modules=["q_proj"])
    assert lora_targets(dream, default) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert lora_targets(Qwen2Config(), chosen) == ["q_proj"]
    with pytest.raises(ValueError, match=r"model_type='qwen2' is no d1 family.*pass --lora_target_modules"):
        lora_targets(Qwen2Config(), default)


def test_dream_checkpoint_runs_natively_even_with_trust_remote_code(tmp_path: Path) -> None:
    """The checkpoint's remote code (named in auto_map; here files that fail when run) is never used: transformers
    prefers classes registered outside it (d1's), so --trust_remote_code can stay on for Dream's tokenizer."""
    folder = reference_path("dream-tiny")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, tmp_path / name)
    assert set(json.loads((tmp_path / "config.json").read_text())["auto_map"]) == {"AutoConfig", "AutoModel"}
    for module in ("configuration_dream.py", "modeling_dream.py"):
        (tmp_path / module).write_text('raise RuntimeError("the remote code ran")\n')
    assert isinstance(load_model(tmp_path, trust_remote_code=True), DreamModel)
