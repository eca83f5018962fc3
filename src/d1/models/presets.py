"""Tiny embedded models: a character-level tokenizer built offline and toy-sized native LLaDA configs.

They make every command runnable on a laptop CPU with no download: `d1 init-model --preset tiny --output DIR`.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from d1.models.llada import LLaDAConfig, LLaDAModelLM

BOS, EOS, PAD, MASK, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|mdm_mask|>", "<|unk|>"
CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
FORMAT_TOKENS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
"""d1's answer-format tags are single tokens, so tiny models spend no capacity spelling them."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""LLaDA-8B-Instruct's chat format, so prompts built for the tiny model look like the real ones."""

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 192},
    "small": {"d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4, "mlp_hidden_size": 384},
}
"""Toy sizes of the LLaDA architecture: tiny (~0.12M parameters) for tests, small (~0.9M) for the demo."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with LLaDA's special tokens and chat template."""
    specials = [PAD, EOS, BOS, MASK, UNK, *CHAT_TOKENS]
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + list(FORMAT_TOKENS) + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    core.add_tokens(list(FORMAT_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )


def build_model(preset: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LLaDAModelLM:
    """A freshly initialised native LLaDA of the preset's size, with the tokenizer's special ids."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; choose one of {sorted(PRESETS)}.")
    config = LLaDAConfig(
        **PRESETS[preset],
        vocab_size=len(tokenizer),
        embedding_size=len(tokenizer),
        max_sequence_length=4096,
        rope_theta=10000.0,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return LLaDAModelLM(config)


def model_files(folder: str | Path) -> list[str]:
    """The names of model files (config, weights) already in `folder`, which `init_model` would replace."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))


def init_model(preset: str, output: str | Path, seed: int = 0) -> Path:
    """Write a fresh preset model (safetensors) and its tokenizer to `output`; both load with `d1.load_*`."""
    tokenizer = build_tokenizer()
    model = build_model(preset, tokenizer, seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
