"""`gridwatch watch --config CAMERAS.yaml [--events OUT.jsonl]`: camera streams to violation events.

File and folder sources are processed to their end, then the command exits (this is how a
city replays archived footage); with live sources it runs until interrupted. One JSON line
per event transition goes to --events (or stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from serving.commands.numbers import THREADS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "watch", help="watch cameras (files, folders, RTSP/HTTP) and write violation events",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--config", required=True, type=Path, help="cameras YAML file")
    parser.add_argument("--events", type=Path, help="append event JSON lines here (default: stdout)")
    parser.add_argument("--model", type=Path, help="ONNX model (default: settings / shipped model)")
    parser.add_argument("--evidence-dir", type=Path, help="evidence folder (default: settings)")
    parser.add_argument("--taxonomy", type=Path, help="a city's taxonomy override file")
    parser.add_argument("--threads", type=THREADS, help="ONNX Runtime threads")
    parser.add_argument("--health-every", type=float, default=60.0,
                        help="seconds between health lines on stderr for live sources")
    parser.set_defaults(func=run)


def event_line(event) -> str:
    """One event as the JSON line `--events` writes: the event-line contract."""
    return json.dumps(event.to_json(), ensure_ascii=False) + "\n"


def run(args: argparse.Namespace) -> int:
    import logging

    from detector import DetectorError, TaxonomyError, load_taxonomy
    from serving.cameras import CameraConfigError, load_cameras
    from serving.evidence import EvidenceStore
    from serving.pipeline import Pipeline
    from serving.settings import SettingsError, load_detector, load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(
            args.config, model=args.model, evidence_dir=args.evidence_dir,
            taxonomy_file=args.taxonomy, threads=args.threads,
        )
        taxonomy = load_taxonomy(settings.taxonomy_file)
        cameras = load_cameras(args.config, taxonomy=taxonomy)
        detector = load_detector(settings)
    except (SettingsError, TaxonomyError, CameraConfigError, DetectorError) as exc:
        print(f"gridwatch watch: {exc}", file=sys.stderr)
        return 2

    out = open(args.events, "a", encoding="utf-8") if args.events else sys.stdout
    lock = threading.Lock()

    def write(event, _frame) -> None:  # the pipeline already wrote the frame to the evidence folder
        with lock:
            out.write(event_line(event))
            out.flush()

    pipeline = Pipeline(cameras, detector, taxonomy, on_event=write,
                        evidence=EvidenceStore(settings.resolved_evidence_dir))
    try:
        if not any(c.is_live for c in cameras.cameras):
            pipeline.run_until_done()
        else:
            pipeline.start()
            try:
                while not pipeline.wait(args.health_every):
                    health = {cid: h.to_json() for cid, h in pipeline.health.items()}
                    print(json.dumps({"health": health}), file=sys.stderr, flush=True)
            finally:
                pipeline.stop()
    finally:
        if out is not sys.stdout:
            out.close()
    failed = [cid for cid, h in pipeline.health.items() if h.state == "failed"]
    for cid in failed:
        print(f"gridwatch watch: camera {cid}: {pipeline.health[cid].last_error}", file=sys.stderr)
    return 1 if failed and len(failed) == len(pipeline.health) else 0
