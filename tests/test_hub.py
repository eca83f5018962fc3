"""Local path or Hub name: a mistyped local path fails at once, naming it, instead of going to the Hub."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from d1.data.sources import load_rows
from d1.hub import looks_local
from d1.models.loading import load_config, load_tokenizer


def test_looks_local_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("./runs/tinyy", "/data/model", "~/model", "runs/tinyy", "a/b/c", "..\\model", ".model"):
        assert looks_local(name), name
    for name in ("GSAI-ML/LLaDA-8B-Instruct", "gpt2", "openai/gsm8k"):
        assert not looks_local(name), name


@pytest.mark.parametrize("name", ["./runs/tinyy", "runs/tinyy", "runs/tiny/checkpoint-5"])
def test_mistyped_local_paths_fail_fast_naming_them(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    for load in (load_tokenizer, load_config, load_rows):
        began = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="no such file or folder") as caught:
            load(name)
        assert time.perf_counter() - began < 2
        assert repr(name) in str(caught.value)
    with pytest.raises(FileNotFoundError, match=r"Did you mean .*runs/tiny'"):
        load_tokenizer("./runs/tinyy")
