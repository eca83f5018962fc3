"""`d1.load_model` / `d1.load_tokenizer` on local folders, mask-token resolution, LoRA and 4-bit errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

import d1
from d1.models.loading import apply_lora, linear_module_names, resolve_mask_token_id
from tests.conftest import reference_path


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
    with pytest.raises(ValueError, match=r"match no Linear layer.*q_proj"):
        apply_lora(model, target_modules=["query", "q_proj"])
    peft_model = apply_lora(model, r=4, lora_alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_4bit_on_cpu_is_a_clear_error(tiny_model_dir) -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        d1.load_model(tiny_model_dir, load_in_4bit=True)
