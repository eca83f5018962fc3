"""d1: masked SFT, diffu-GRPO and evaluation for masked diffusion language models (LLaDA).

Public API: `load_model`, `load_tokenizer`, `generate` (LLaDA's block sampler, and its `Trace`), the sampler
registry (`sample` with `LLaDAOptions`/`DreamOptions`, `SAMPLERS`), `per_token_logps`, `tasks`. Imported lazily
so that `d1 --help` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "d1.models.loading",
    "load_tokenizer": "d1.models.loading",
    "generate": "d1.diffusion.sampling",
    "Trace": "d1.diffusion.trace",
    "sample": "d1.diffusion.samplers",
    "SAMPLERS": "d1.diffusion.samplers",
    "SamplerCall": "d1.diffusion.samplers",
    "LLaDAOptions": "d1.diffusion.samplers",
    "DreamOptions": "d1.diffusion.samplers",
    "per_token_logps": "d1.diffusion.likelihood",
}
__all__ = [*_EXPORTS, "tasks"]


def __getattr__(name: str) -> Any:
    if name == "tasks":
        return importlib.import_module("d1.tasks")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'd1' has no attribute {name!r}")
