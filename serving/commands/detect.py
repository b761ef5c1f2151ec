"""`gridwatch detect`: run the detector over images, folders and recorded videos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.commands.numbers import THREADS, real


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect violations in image files, folders and video files",
        description="One JSON line per processed frame on stdout; errors on stderr, and the run goes on.",
    )
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="image, folder or video file")
    p.add_argument("--model", type=Path, help="ONNX model (default: the shipped model in weights/)")
    p.add_argument("--save", type=Path, metavar="DIR", help="write annotated images here")
    p.add_argument("--every", type=real(0), default=1.0, metavar="SECONDS", help="video sampling interval (0: every frame)")
    p.add_argument("--score", type=real(0, 1), help="minimum score (default 0.25)")
    p.add_argument("--threads", type=THREADS, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--config", type=Path, help="settings YAML")
    p.set_defaults(func=run)


def _saved_name(source: str, index: int, is_video: bool, save_dir: Path) -> Path:
    stem = Path(source).stem
    return save_dir / (f"{stem}_f{index:06d}.jpg" if is_video else f"{stem}.jpg")


def run(args: argparse.Namespace) -> int:
    import cv2

    from detector import DetectorError, annotate
    from serving.settings import SettingsError, load_detector, load_settings
    from serving.streams.media import VIDEO_SUFFIXES, MediaError, expand_sources, sample_file

    if args.every < 0:
        print("error: --every must be >= 0", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config, model=args.model, score_threshold=args.score, threads=args.threads)
        detector = load_detector(settings)
    except (SettingsError, DetectorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    files, errors = expand_sources(args.sources)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    failed = bool(errors)
    if args.save:
        if args.save.resolve() in {path.resolve().parent for path in files}:
            # Annotated copies are named after their source: they would replace the originals.
            print(f"error: --save {args.save} is a folder the images are read from; save the annotated "
                  "copies elsewhere", file=sys.stderr)
            return 2
        args.save.mkdir(parents=True, exist_ok=True)
    taken: dict[Path, str] = {}  # saved name -> the source it holds, so two a.jpg do not share one

    for path in files:
        try:
            for frame in sample_file(path, args.every):
                detections = detector(frame.image)
                record = {
                    "source": frame.source,
                    "frame": frame.index,
                    "time_s": round(frame.time_s, 3),
                    "width": frame.image.shape[1],
                    "height": frame.image.shape[0],
                    "detections": detections.to_records(),
                }
                if args.save:
                    out = _saved_name(frame.source, frame.index, path.suffix.lower() in VIDEO_SUFFIXES, args.save)
                    first, n = out, 2
                    while taken.setdefault(out, frame.source) != frame.source:
                        out, n = first.with_name(f"{first.stem}~{n}{first.suffix}"), n + 1
                    cv2.imwrite(str(out), annotate(frame.image, detections))
                    record["saved"] = str(out)
                print(json.dumps(record, ensure_ascii=False), flush=True)
        except (MediaError, DetectorError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0
