"""`gridwatch review export --out DIR [--since DATE] [--camera ID]...`: reviewed cases and
labelled frames as a dataset source for training (see serving/review_export.py)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from serving.commands.store_args import add_store_arguments


def _date(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("review", help="review decisions as training data")
    sub = parser.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write reviewed cases and labelled frames as a YOLO dataset source "
                                           "(incremental)")
    export.add_argument("--out", required=True, type=Path, help="dataset folder (created; added to on later runs)")
    export.add_argument("--since", type=_date, help="only cases reviewed (frames labelled) at or after this date/time (ISO-8601)")
    export.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")
    export.add_argument("--model", type=Path, help="model for the pseudo-labels (default: the served model)")
    add_store_arguments(export)
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector import DetectorError, TaxonomyError, load_taxonomy
    from serving.evidence import EvidenceStore
    from serving.review_export import export_reviews
    from serving.settings import SettingsError, load_detector, load_settings
    from serving.store.db import Database

    try:
        settings = load_settings(args.config, data_dir=args.data_dir, model=args.model)
        db = Database(settings.resolved_database_url)
        report = export_reviews(db, EvidenceStore(settings.resolved_evidence_dir), load_detector(settings),
                                load_taxonomy(settings.taxonomy_file), args.out, since=args.since,
                                cameras=args.camera)
    except (SettingsError, DetectorError, TaxonomyError, OSError, ValueError) as exc:
        print(f"gridwatch review export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": report.out, "written": len(report.written), "labelled": report.labelled,
                      "relabelled": len(report.relabelled), "withdrawn": len(report.withdrawn),
                      "already_there": report.already_there,
                      "skipped": report.skipped, "labels_by_camera": report.labels_by_camera}, ensure_ascii=False))
    return 0
