"""`gridwatch models list`, `gridwatch models rollback`, `gridwatch models promote`: the served
model's history (training/promotion/model_history.py); `gridwatch models card`: its card measured
again. Only argparse at import time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.commands import add_weights_dir, blank_reason, fail, weights_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="the served model's history: list, roll back, force a promotion")
    commands = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("list", help="every model promoted into weights/: version, date, data hash, "
                                         "headline AP, who promoted it and why")
    add_weights_dir(p)
    p.add_argument("--json", action="store_true", help="one JSON object: the kept models and the events")
    p.set_defaults(func=run_list)

    p = commands.add_parser("rollback", help="put a kept model back in service (the running service takes it live)")
    p.add_argument("version", nargs="?", metavar="VERSION",
                   help="the version to put back (default: the one promoted before the current one)")
    p.add_argument("--reason", default="rollback", help="why (kept in the history)")
    add_weights_dir(p)
    p.set_defaults(func=run_rollback)

    p = commands.add_parser(
        "promote", help="force a model into service without champion/challenger; needs a reason, kept in the history",
        description="Install an export folder's model (gridwatch-fp32.onnx, gridwatch-int8.onnx and their cards, as "
        "`gridwatch export` or a training run's export/ writes them) into weights/, keeping the model it replaces. "
        "Champion/challenger (`gridwatch train --promote`, `gridwatch retrain`) is the normal way; this is for "
        "when a person decides otherwise, and says why.")
    p.add_argument("folder", type=Path, metavar="DIR", help="the export folder")
    p.add_argument("--reason", required=True, help="why this model goes in service without the comparison")
    add_weights_dir(p)
    p.set_defaults(func=run_promote)

    p = commands.add_parser(
        "card", help="measure the served model again on a built dataset's real val split, held out by place and "
                     "against the COCO teacher, into its cards",
        description="Write two sections of the served model's cards (weights/gridwatch*.md and .json) from a "
        "measurement on the real val split of a `gridwatch dataset build`: AP held out by place (for a build split "
        "by image, the val images of places it trained on are left out) and the share of the COCO teacher's "
        "context-class boxes it finds. The rest of each card is left as it is.")
    p.add_argument("--data", type=Path, required=True, metavar="DATA_YAML", help="the built dataset's data.yaml")
    add_weights_dir(p)
    p.set_defaults(func=run_card)


def _weights(args: argparse.Namespace) -> Path:
    return weights_dir(args).resolve()


def run_list(args: argparse.Namespace) -> int:
    from training.promotion.model_history import current, entries, events, table

    weights = _weights(args)
    if not weights.is_dir():
        return fail(f"{weights}: no such folder (--weights-dir names the folder the served model is in)")
    if args.json:
        now = current(weights)
        print(json.dumps({"current": now.version if now else None,
                          "models": [e.model_dump() for e in entries(weights)],
                          "events": [e.model_dump() for e in events(weights)]}, ensure_ascii=False))
        return 0
    for line in table(weights):
        print(line)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from training.promotion.model_history import HistoryError, rollback

    try:
        rollback(_weights(args), args.version, reason=args.reason, log=lambda line: print(line, flush=True))
    except HistoryError as exc:
        return fail(str(exc))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from training.promotion.model_history import FORCED, HistoryError, model_files, promote

    if error := blank_reason(args.reason, "--reason", "say why this model skips champion/challenger"):
        return fail(error)
    files = model_files(args.folder)
    if not any(name.endswith(".onnx") for name in files):
        return fail(f"{args.folder}: no gridwatch-*.onnx model files (an export folder of `gridwatch export`)")
    try:
        promote(files, _weights(args), how=FORCED, reason=args.reason.strip(),
                log=lambda line: print(line, flush=True))
    except HistoryError as exc:
        return fail(str(exc))
    return 0


def run_card(args: argparse.Namespace) -> int:
    from training.fit.train import measure_served

    try:
        measure_served(args.data, _weights(args))
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    print(f"cards written in {_weights(args)}")
    return 0
