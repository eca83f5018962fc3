"""`d1 trace FILE --output trace.html`: one self-contained HTML page replaying the traced generations of a
`*_traces.json` file (written by `d1 eval --save_traces N`)."""

from __future__ import annotations

import argparse

from d1.utils import say
from d1.viz.html import write_trace_html


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 trace", description=__doc__)
    parser.add_argument(
        "file", help="A *_traces.json file of `d1 eval --save_traces N`, or a folder holding exactly one."
    )
    parser.add_argument("--output", default="trace.html", help="The HTML file to write (default trace.html).")
    args = parser.parse_args(argv)
    path = write_trace_html(args.file, args.output)
    say(f"trace viewer: {path} (open it in a browser; it needs no network)")
    return 0
