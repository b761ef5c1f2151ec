"""`gridwatch bench`: speed against Ultralytics on the same model and frames; with a mode
flag, a machine's cameras (--cameras), the review page (--review) or a soak (--soak-hours)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.files import SHARED_DIR
from serving.bench import cameras as camera_bench
from serving.bench import cluster as cluster_bench
from serving.bench import review as review_bench
from serving.bench import soak
from serving.commands.numbers import IMGSZ, THREADS, whole

SHARED_DATASETS = SHARED_DIR / "datasets"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the detector against Ultralytics (or, with --cameras, a whole machine's streams; "
        "with --review, the review page in a browser; with --soak-hours, gridwatch serve over simulated days; "
        "with --cluster, camera workers on Ray against one process)",
        description="Detector mode: per-frame latency of gridwatch, the bare ONNX Runtime session and "
        "Ultralytics' predict on the same model and 1080p frames, at batch 1 and 8, with ratios.",
    )
    p.add_argument("--model", type=Path, help="ONNX model to time (default: the shipped model)")
    p.add_argument(
        "--reference-model",
        type=Path,
        help="model Ultralytics runs (default: the fp32 twin of --model if one lies beside it, else --model)",
    )
    p.add_argument("--images", type=Path, default=SHARED_DATASETS, help="folder of real images for frames")
    p.add_argument("--frames", type=whole(1), default=16, help="number of distinct frames")
    p.add_argument("--rounds", type=whole(1), default=3, help="passes over the frames")
    p.add_argument("--threads", type=THREADS, help="ONNX Runtime threads (default: one per core, as Ultralytics)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--imgsz", type=IMGSZ,
                   help="longest input side for both runtimes (a model with dynamic height and width only; "
                        "default: the model's own)")
    p.add_argument("--compare", nargs="+", metavar="MODEL[@IMGSZ]",
                   help="runtime options side by side in one run: each ONNX model (at another longest side "
                        "with @IMGSZ) through gridwatch and through Ultralytics on its fp32 twin, batch 1")
    camera_bench.add_arguments(p)
    cluster_bench.add_arguments(p)
    review_bench.add_arguments(p)
    soak.add_arguments(p)
    p.set_defaults(func=run)


def _reference_for(model: Path) -> Path:
    twin = model.with_name(model.name.replace("-int8", "-fp32"))
    return twin if twin != model and twin.is_file() else model


def run(args: argparse.Namespace) -> int:
    if args.soak_hours:
        return soak.run(args)
    if args.cluster:
        return cluster_bench.run(args)
    if args.cameras:
        return camera_bench.run(args)
    if args.review:
        return review_bench.run(args)

    from detector import DetectorError
    from serving.bench.detector import bench_frames, format_table, frame_input, run_benchmark, summarise
    from serving.settings import SettingsError, load_settings

    if args.compare:
        return _compare(args)
    try:
        model = load_settings(model=args.model).resolved_model()
        reference = args.reference_model or _reference_for(model)
        frames = bench_frames(args.images, args.frames)
        timings = run_benchmark(model, reference, frames, threads=args.threads, rounds=args.rounds,
                                imgsz=args.imgsz)
        summary = {**summarise(timings), "frame_input": frame_input(model, frames[0], args.imgsz)}
    except (SettingsError, DetectorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": str(model), "reference_model": str(reference), **summary}))
    else:
        print(format_table(summary, model, reference))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from detector import DetectorError
    from serving.bench.detector import Option, bench_frames, compare_options, format_options

    try:
        options = [Option.parse(spec) for spec in args.compare]
        missing = [str(o.model) for o in options if not o.model.is_file()]
        if missing:
            raise ValueError(f"no such model: {', '.join(missing)}")
        frames = bench_frames(args.images, args.frames)
        rows = compare_options(options, [_reference_for(o.model) for o in options], frames,
                               threads=args.threads, rounds=args.rounds)
    except (DetectorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"options": rows}) if args.json else format_options(rows))
    return 0
