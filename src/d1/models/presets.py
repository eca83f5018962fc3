"""Tiny embedded models: a character-level tokenizer built offline and toy-sized native configs, per family.

They make every command runnable on a laptop CPU with no download:
`d1 init-model --family llada|dream --preset tiny|small --output DIR`.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from d1.models.families import family

FORMAT_TOKENS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
"""d1's answer-format tags are single tokens, so tiny models spend no capacity spelling them."""

PRESETS = ("tiny", "small")
"""Toy sizes (see each family's `presets`): tiny (~0.1M parameters) for tests, small (~1M) for the demo."""


def build_tokenizer(family_name: str = "llada") -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with the family's special tokens and chat template."""
    spec = family(family_name).tokenizer
    specials = list(dict.fromkeys([spec.pad, spec.eos, spec.bos, spec.mask, spec.unk, *spec.chat_tokens]))
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + list(FORMAT_TOKENS) + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=spec.unk))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    core.add_tokens(list(FORMAT_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        mask_token=spec.mask,
        unk_token=spec.unk,
        chat_template=spec.chat_template,
        padding_side="left",
        model_max_length=4096,
    )


def build_model(
    preset: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, family_name: str = "llada"
) -> PreTrainedModel:
    """A freshly initialised native model of the family and preset size, with the tokenizer's special ids."""
    spec = family(family_name)
    ids = {
        "vocab_size": len(tokenizer),
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = spec.tiny_config(preset, **ids)
    torch.manual_seed(seed)
    return spec.model_class(config)


def model_files(folder: str | Path) -> list[str]:
    """The names of model files (config, weights) already in `folder`, which `init_model` would replace."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))


def init_model(preset: str, output: str | Path, seed: int = 0, family_name: str = "llada") -> Path:
    """Write a fresh preset model of the family (safetensors) and its tokenizer to `output`; both load with
    `d1.load_*`."""
    tokenizer = build_tokenizer(family_name)
    model = build_model(preset, tokenizer, seed, family_name)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output

