"""Reading datasets: a 🤗 Hub name or a local json/jsonl/csv/parquet file, with clear errors on bad input."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import datasets

from d1.hub import check_local_or_hub, hub_unreachable
from d1.tasks.base import check_utf8, read_records

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(source: str | Path, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """Load `source` (local file or folder of such files, or a Hub dataset name) as a `datasets.Dataset`."""
    path = Path(source)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS)
        if not files or files[0].suffix not in LOCAL_FORMATS:
            raise ValueError(
                f"train_data={str(source)!r}: expected a .json, .jsonl, .csv or .parquet file (or a folder of them)."
            )
        builder = LOCAL_FORMATS[files[0].suffix]
        if all(f.stat().st_size == 0 for f in files):
            raise ValueError(f"Dataset {str(source)!r} is empty: there is nothing to train or evaluate on.")
        text_files = [f for f in files if f.suffix != ".parquet"]
        for file in text_files:
            check_utf8(file)  # datasets reads some bytes that are not UTF-8 without complaint
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors log a traceback first
        try:
            rows = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        except Exception as err:  # datasets raises many kinds for unparsable files and names no line
            for file in text_files:
                read_records(file)  # raises naming the file and line when d1's own reader finds the fault
            raise ValueError(f"Could not read {str(source)!r} as {builder}: {err}") from err
        finally:
            datasets.logging.set_verbosity(verbosity)
    else:
        check_local_or_hub(str(source), "train_data")
        try:
            rows = datasets.load_dataset(str(source), name, split=split)
        except (FileNotFoundError, ConnectionError, OSError) as err:
            raise hub_unreachable(
                str(source),
                err,
                f"hf download --repo-type dataset {source}",
                "pass a local .json/.jsonl/.csv/.parquet file (or a folder of them)",
            ) from err
    if len(rows) == 0:
        raise ValueError(
            f"Dataset {str(source)!r} (split {split!r}) is empty: there is nothing to train or evaluate on."
        )
    return rows


def require_columns(rows: datasets.Dataset, columns: Iterable[str], source: str, hint: str = "") -> None:
    """Fail with the missing and the available column names when `rows` lacks any of `columns`."""
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise ValueError(
            f"Dataset {source!r} has no column(s) {missing}; its columns are {rows.column_names}. {hint}".strip()
        )
