"""`gridwatch second-stage train` and `gridwatch second-stage false-alarms`.

Only argparse at import time: torch loads inside the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.commands.numbers import THREADS, real, whole
from training.second_stage.net import DEFAULT_SIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser("second-stage", help="crop classifiers learnt from reviews: the truck load decision, "
                                "false-alarm filters")
    commands = top.add_subparsers(dest="second_stage_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "train", help="train the truck load decision (open / covered ...) from review exports; ONNX + card",
        description="Crop the trucks of reviewed muck_truck_uncovered cases (confirmed: open load; rejected as "
        "not a violation here: covered) and of labelled frames (with --load-labels), hold whole frames out, "
        "train a small CNN from scratch on CPU, export OUT/load-decision.onnx and write its card with precision "
        "and recall per class on the held-out cases. Point the `load_classifier` setting at the ONNX file.")
    p.add_argument("--review-export", action="append", required=True, type=Path, metavar="DIR",
                   help="a `gridwatch review export` folder (repeatable)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the ONNX file and card go")
    p.add_argument("--load-labels", type=Path, metavar="FILE",
                   help="JSON {frame stem: [load per truck box]} for labelled frames (open, mesh, tarp, covered, "
                        "cannot_tell)")
    p.add_argument("--held-out", type=real(0, 1, low_open=True), default=0.25, help="share of each label's frames held out (0.25)")
    _train_options(p)
    p.add_argument("--figure-note", default="",
                   help="what the held-out figures measure, for the card (default: a city's reviews, said so)")
    p.set_defaults(func=run_train)

    p = commands.add_parser(
        "false-alarms", help="per violation: rejected cases a filter learnt from reviews would remove at a held recall",
        description="Replay reviewed cases: frames dealt into folds, each fold scored by a crop classifier "
        "(confirmed vs rejected) trained on the others; print, per violation, how many rejected cases the "
        "threshold that keeps --recall of the confirmed ones would have removed.")
    p.add_argument("--review-export", action="append", required=True, type=Path, metavar="DIR")
    p.add_argument("--violation", action="append", default=[], help="only these (default: every one with reviews)")
    p.add_argument("--recall", type=float, default=0.95, help="share of confirmed cases kept (0.95)")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--taxonomy-file", type=Path, help="a city's taxonomy override")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    _train_options(p)
    p.set_defaults(func=run_false_alarms)


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=whole(1), default=60)
    p.add_argument("--size", type=whole(8, 1024), default=DEFAULT_SIZE, help="crop side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=THREADS, default=1)


def _options(args: argparse.Namespace):  # noqa: ANN202
    from training.second_stage.net import TrainOptions

    if args.epochs < 1 or args.size < 16 or args.threads < 1:
        raise ValueError("--epochs and --threads must be at least 1, --size at least 16")
    return TrainOptions(size=args.size, epochs=args.epochs, seed=args.seed, threads=args.threads)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    from training.second_stage.examples import ExportError, read_load_labels
    from training.second_stage.load_decision import TrainingError, train_load_decision

    try:
        labels = read_load_labels(args.load_labels) if args.load_labels else None
        result = train_load_decision(args.review_export, args.out, load_labels=labels, held_out=args.held_out,
                                     options=_options(args), figure=args.figure_note,
                                     log=lambda m: print(m, file=sys.stderr))
    except (ExportError, TrainingError, ValueError) as exc:
        return _fail(str(exc))
    print(json.dumps({"model": str(result.model), "card": str(result.card_path),
                      "held_out": [f.__dict__ for f in result.card.held_out]}, indent=1))
    return 0


def run_false_alarms(args: argparse.Namespace) -> int:
    from detector import load_taxonomy
    from training.second_stage.examples import ExportError
    from training.second_stage.false_alarms import measure, table

    if not 0 < args.recall <= 1 or args.folds < 2:
        return _fail("--recall must be in (0, 1] and --folds at least 2")
    try:
        figures, report = measure(args.review_export, load_taxonomy(args.taxonomy_file), violations=args.violation,
                                  recall=args.recall, folds=args.folds, options=_options(args),
                                  log=lambda m: print(m, file=sys.stderr))
    except (ExportError, ValueError) as exc:
        return _fail(str(exc))
    print(table(figures))
    if report.skipped:
        print(f"not used: {dict(report.skipped)}")
    if args.json:
        args.json.write_text(json.dumps([{**f.__dict__, "removed_share": f.removed_share} for f in figures],
                                        indent=1), encoding="utf-8")
    return 0
