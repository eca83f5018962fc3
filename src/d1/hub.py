"""Telling a local path from a 🤗 Hub name, so a mistyped path fails at once instead of being tried on the Hub.

Rule: a name that does not exist locally is a local path (and an error) when it starts with `.`, `/` or
`~`, holds a backslash or more than one `/`, or its first folder exists here (`runs/tinyy` beside `runs/`).
Anything else (`name`, `org/name`) is a Hub id, left to the Hub libraries (which use the cache offline).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) asks the Hub libraries not to go online."""
    return any(
        os.environ.get(name, "0") not in ("0", "", "false", "False")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def looks_local(name: str) -> bool:
    """True for a name only a local path can have, or whose first folder exists here (see module doc)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def check_local_or_hub(name: str, field: str) -> None:
    """Fail with "no such file or folder" (and near names) when `name` is a missing local path."""
    path = Path(name).expanduser()
    if path.exists() or not looks_local(name):
        return
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    near = (
        difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=3)
        if parent.is_dir()
        else []
    )
    hint = f" Did you mean {', '.join(repr(str(parent / n)) for n in near)}?" if near else ""
    raise FileNotFoundError(
        f"{field}={name!r}: no such file or folder (a local path, so the Hugging Face Hub was not tried).{hint}"
    )


def hub_cache() -> str:
    """The Hub cache folder the libraries use, for messages."""
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"


def hub_unreachable(name: str, err: Exception, download: str, local: str) -> OSError:
    """The error for a Hub name that could not be loaded: why, how to download it, the local alternative."""
    why = "HF_HUB_OFFLINE is set and it is not cached" if hub_offline() else "unreachable or not cached"
    return OSError(
        f"Could not load {name!r} from the Hugging Face Hub ({why}; cache: {hub_cache()}). Download it "
        f"first on a machine with internet (`{download}`, with the same HF_HOME/HF_HUB_CACHE), or {local}. "
        f"Original error: {type(err).__name__}: {err}"
    )
