"""`d1 merge --base MODEL --adapter DIR --output DIR [--dtype ...]`: merge a LoRA adapter (as `d1 sft` saves
it) into its base model; the output folder loads with `d1.load_model`, `d1 grpo --model_path` and
`d1 eval --model_path`."""

from __future__ import annotations

import argparse

from d1.utils import check_writable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 merge", description=__doc__)
    parser.add_argument("--base", required=True, help="Base model: Hub name or local folder.")
    parser.add_argument("--adapter", required=True, help="Folder with adapter_config.json + adapter weights.")
    parser.add_argument("--output", required=True, help="Folder to write the merged model to.")
    parser.add_argument("--dtype", default="auto", help="auto (the base's), bfloat16, float16 or float32.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow the base's own model code.")
    args = parser.parse_args(argv)
    check_writable(args.output, "output")
    from d1.models.merge import merge_adapter

    path = merge_adapter(args.base, args.adapter, args.output, args.dtype, args.trust_remote_code)
    print(f"merged {args.adapter} into {args.base}: {path}")
    return 0
