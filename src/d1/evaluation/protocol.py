"""The protocol card: what produced a result, written into every generation file (its `settings` block) and
every `d1 score` / `d1 harness` result.

A card is the run's settings (sampler, prompt, data, subsample, seed, weights: see `files.run_settings`) plus
`protocol` and `protocol_source` (whose prompts, shots and answer extraction), `model_revision` (name or path
and, for a Hub name, the commit of the cached snapshot) and `software` (d1, torch, transformers, lm-eval
versions). Everything but `software` is part of a generation file's resume key. Files without a card (d1's
published generations, files of older versions) count as protocol "d1", marked `legacy`.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from d1.tasks.official import D1_SOURCE

NOT_RESUME_KEYS = ("software",)
"""Card entries a resumed file may differ in (a library upgrade between two runs does not block a resume)."""

_PACKAGES = {"d1": "d1", "torch": "torch", "transformers": "transformers", "lm_eval": "lm_eval"}


def software_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a result (None for one not installed)."""
    versions: dict[str, str | None] = {}
    for key, package in _PACKAGES.items():
        try:
            versions[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[key] = None
    if versions["d1"] is None:  # run from a source checkout without installation
        import d1

        versions["d1"] = d1.__version__
    return versions


def hub_commit(name_or_path: str) -> str | None:
    """The commit of the cached Hub snapshot of `name_or_path` (None for a local folder or an uncached name)."""
    if not name_or_path or Path(name_or_path).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # an invalid repo id: no commit to report
        return None
    if not isinstance(cached, str):
        return None
    parts = Path(cached).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def model_revision(model_path: str, checkpoint_path: str = "") -> dict[str, Any]:
    """Which weights: the names given and the Hub commit of each (the settings add the weights fingerprint)."""
    return {
        "name_or_path": model_path,
        "hub_commit": hub_commit(model_path),
        "checkpoint_path": checkpoint_path,
    }


def card_fields(protocol: str, source: str, model_path: str, checkpoint_path: str = "") -> dict[str, Any]:
    """The card entries added to a run's settings."""
    return {
        "protocol": protocol,
        "protocol_source": source,
        "model_revision": model_revision(model_path, checkpoint_path),
        "software": software_versions(),
    }


def read_card(data: dict[str, Any]) -> dict[str, Any]:
    """The card of a generation file or result (`data`'s `settings`, or its `protocol_card`); a file without
    one is d1's legacy format: protocol "d1"."""
    for key in ("protocol_card", "settings"):
        card = data.get(key)
        if isinstance(card, dict) and "protocol" in card:
            return json.loads(json.dumps(card))
    return {"protocol": "d1", "protocol_source": D1_SOURCE, "legacy": True}
