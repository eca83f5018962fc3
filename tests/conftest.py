"""Shared fixtures: the tiny embedded model (built once per session) and the ../shared/reference folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def reference_path(*parts: str) -> Path:
    """A file under ../shared/reference, or skip the test when the reference folder is absent."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the ../shared/reference fixtures are absent beside this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from d1.models.presets import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def arithmetic_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 prompt/completion rows of one-digit additions in d1's reasoning/answer format."""
    path = tmp_path_factory.mktemp("data") / "add.jsonl"
    with path.open("w") as f:
        for a in range(8):
            for b in range(8):
                row = {
                    "prompt": f"{a}+{b}?",
                    "completion": f"<reasoning>{a}+{b}={a + b}</reasoning>\n<answer>{a + b}</answer>",
                }
                f.write(json.dumps(row) + "\n")
    return path
