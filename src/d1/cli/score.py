"""`d1 score DIR_OR_FILES... [--json] [--details]`: d1's accuracy table of generation files, ranks aggregated."""

from __future__ import annotations

import argparse
import json

from d1.evaluation.score import SetupScore, format_table, score_paths, scores_to_json


def _item_details(score: SetupScore) -> list[dict]:
    return [
        {
            "question": item.question,
            "ground_truth": item.ground_truth,
            "extracted": item.extracted,
            "correct": item.correct,
            "n_correct": item.n_correct,
            "n_total": item.n_total,
        }
        for item in score.items
    ]


def _details_text(score: SetupScore) -> str:
    lines = [f"{score.setup} ({score.task}, {len(score.items)} items)"]
    for index, item in enumerate(score.items):
        verdict = "correct" if item.correct else "wrong"
        cells = f" {item.n_correct}/{item.n_total}" if item.n_total != 1 else ""
        lines.append(
            f"  [{index}] {verdict}{cells}  extracted={item.extracted!r}  truth={item.ground_truth!r}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="d1 score", description=__doc__)
    parser.add_argument("paths", nargs="+", help="Generation files or folders of *_generations.json files.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object {setup: {accuracy, ...}}.")
    parser.add_argument(
        "--details", action="store_true", help="Also show each item's extracted answer and verdict."
    )
    parser.add_argument(
        "--mix_protocols",
        action="store_true",
        help="Allow one setup's files to come from different protocols (d1/official); refused by default.",
    )
    args = parser.parse_args(argv)
    scores = score_paths(args.paths, mix_protocols=args.mix_protocols)
    if not scores:
        raise ValueError(f"no *_generations.json files in {args.paths}")
    if args.json:
        data = scores_to_json(scores)
        if args.details:
            for setup, score in scores.items():
                data[setup]["items"] = _item_details(score)
        print(json.dumps(data, indent=2, default=str))
        return 0
    if args.details:
        for score in scores.values():
            print(_details_text(score))
    print(format_table(scores))
    if any(score.protocols != ["d1"] for score in scores.values()):  # d1's own table is unchanged otherwise
        for setup, score in scores.items():
            print(f"protocol of {setup}: {'+'.join(score.protocols)}")
    return 0
