"""`gridwatch dataset ...`: build the training dataset, list the sources.

Only argparse at import time: numpy, PIL and ONNX Runtime load when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.commands.numbers import IMGSZ, THREADS, real, whole


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset", help="build the training dataset from the data sources, pack it for a training machine")
    commands = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)

    b = commands.add_parser(
        "build",
        help="validate, merge, split, pseudo-label and synthesise into an Ultralytics YOLO dataset",
        description="Validate every source, merge them under gridwatch's classes, split train/val "
        "keeping near-duplicates together, add teacher pseudo-labels for context classes and "
        "synthetic flyers/banners, and write DIR/{images,labels}/{train,val}, data.yaml, "
        "manifest.json and report.json.",
    )
    b.add_argument("--sources", help="comma-separated source names or definition files (default: all in datasets/)")
    b.add_argument("--out", type=Path, help="output folder (default: runs/datasets/default)")
    b.add_argument("--root", type=Path, help="datasets root the sources are relative to (default: ../shared/datasets)")
    b.add_argument("--val-fraction", type=float, default=0.15)
    b.add_argument("--split-by", choices=("image", "place"), default="image",
                   help="place: whole places (location metadata, else perceptual-hash clusters) go to one side, "
                        "so val holds streets and buildings train never saw (default: image)")
    b.add_argument(
        "--pseudo-labels", action=argparse.BooleanOptionalAction, default=True,
        help="add COCO-teacher boxes for the context classes (default: on)",
    )
    b.add_argument("--pseudo-score", type=real(0, 1), default=0.4, help="teacher score to keep a pseudo box")
    b.add_argument("--teacher", type=Path, help="teacher ONNX (default: ../shared/weights/coco-yolov8n-int8.onnx)")
    b.add_argument("--synthetic", type=whole(0), default=0, metavar="N", help="synthetic flyer/banner images to add")
    b.add_argument("--imgsz", type=IMGSZ, default=640, help="re-encode images larger than this (max side)")
    b.add_argument("--limit", type=whole(1), metavar="N", help="first N images of each source (quick builds)")
    b.add_argument("--seed", type=int, default=0, help="seed for the synthetic images")
    b.add_argument(
        "--near-duplicate-distance", type=int, default=6, metavar="BITS",
        help="perceptual-hash bits (of 64) within which images count as near-duplicates",
    )
    b.add_argument("--crops", type=whole(0), default=0, metavar="TILE",
                   help="also write train crops of TILE px at native resolution around small signs, ads, "
                        "flyers and banners, on the tiled-inference grid (e.g. the training size; default: none)")
    b.add_argument("--road-views", type=whole(0), default=0, metavar="K",
                   help="also write K road-camera variants (night, infrared, overhead, rain, burned-in "
                        "timestamp/lane/plate text) of every image holding a truck or bus; synthetic, "
                        "reported apart from the real split (default: none)")
    b.add_argument("--max-crops", type=whole(1), metavar="N", help="crops per image at most (default 2)")
    b.add_argument("--threads", type=THREADS, help="ONNX Runtime threads for the teacher")
    b.add_argument("--cache-dir", type=Path, help="teacher output cache (default: runs/cache/teacher)")
    b.set_defaults(func=run_build)

    k = commands.add_parser(
        "pack",
        help="re-encode a built dataset at the training size, to carry it to a training machine",
        description="Write the dataset's images as WebP no larger than --imgsz a side, with its labels, "
        "manifest and a data.yaml that works wherever the folder is copied (OUT/part-1). With --parts N "
        "the train images of each source are dealt over N folders: part-1 trains alone on its share, "
        "and copying every part's images/ into part-1 gives the whole pack.",
    )
    k.add_argument("--data", type=Path, required=True, help="data.yaml of a built dataset")
    k.add_argument("--out", type=Path, required=True, help="new folder for the pack")
    k.add_argument("--imgsz", type=IMGSZ, default=416, help="longest side after packing: the training size")
    k.add_argument("--quality", type=int, default=75, help="WebP quality, 1-100")
    k.add_argument("--parts", type=whole(1), default=1, help="folders to deal the train images over")
    k.set_defaults(func=run_pack)

    i = commands.add_parser(
        "import",
        help="turn a labelling tool's export (folder or zip) into a source definition",
        description="Detect the export's layout (CVAT for images, CVAT COCO, CVAT Pascal VOC, CVAT Ultralytics "
        "YOLO, CVAT YOLO 1.1, Label Studio JSON, COCO and YOLO), count its classes, and write a source "
        "definition whose path works from any folder: `gridwatch dataset build --sources DEF.yaml`.",
    )
    i.add_argument("export", type=Path, metavar="EXPORT", help="the export: a folder, a .zip, or its annotation file")
    i.add_argument("--name", required=True, help="the source's name (prefixes its files in a build)")
    i.add_argument("--out", required=True, type=Path, metavar="DEF.yaml", help="the source definition to write")
    i.add_argument("--format", default="auto", choices=("auto", "yolo", "coco", "voc", "labelstudio", "cvat"),
                   help="the annotation format (default: detected)")
    i.add_argument("--map", action="append", default=[], metavar="SRC=DST",
                   help="map the export's class SRC to gridwatch class DST; SRC= drops it on purpose (repeatable)")
    i.add_argument("--licence", help="the labels' licence (default: own labels, not for redistribution)")
    i.add_argument("--attribution", help="who labelled them (goes into the model card)")
    i.add_argument("--images", type=Path, metavar="DIR",
                   help="where the images are when the export holds none (Label Studio JSON: its upload folder)")
    i.set_defaults(func=run_import)

    s = commands.add_parser("sources", help="list the data sources with licence and class mapping")
    s.add_argument("--root", type=Path)
    s.set_defaults(func=run_sources)


def _sources(arg: str | None, root: Path | None):
    from training.data.sources import all_sources, load_source

    if not arg:
        return all_sources(root)
    return [load_source(name.strip(), root) for name in arg.split(",") if name.strip()]


def run_build(args: argparse.Namespace) -> int:
    from training.data.dataset_build import DEFAULT_OUT, BuildError, BuildOptions, build
    from training.data.sources import SourceError
    from training.data.synthetic import SyntheticError

    try:
        options = BuildOptions(
            sources=_sources(args.sources, args.root),
            out=args.out or DEFAULT_OUT,
            val_fraction=args.val_fraction,
            split_by=args.split_by,
            pseudo_labels=args.pseudo_labels,
            pseudo_score=args.pseudo_score,
            synthetic=args.synthetic,
            imgsz=args.imgsz,
            limit=args.limit,
            seed=args.seed,
            near_duplicate_distance=args.near_duplicate_distance,
            teacher=args.teacher,
            threads=args.threads,
            cache_dir=args.cache_dir,
            crops=args.crops,
            road_views=args.road_views,
            **({"max_crops": args.max_crops} if args.max_crops is not None else {}),
        )
        build(options, log=lambda line: print(line, flush=True))
    except (BuildError, SourceError, SyntheticError, FileNotFoundError, ValueError) as exc:
        print(f"gridwatch dataset build: {exc}", file=sys.stderr)
        return 2
    return 0


def run_import(args: argparse.Namespace) -> int:
    from training.data.dataset_import import DatasetImportError, import_export

    try:
        import_export(args.export, args.name, args.out, fmt=args.format, maps=args.map, licence=args.licence,
                      attribution=args.attribution, images=args.images, log=lambda line: print(line, flush=True))
    except DatasetImportError as exc:
        print(f"gridwatch dataset import: {exc}", file=sys.stderr)
        return 2
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from training.data.pack import PackError, pack
    from training.data.yolo_format import YoloFormatError

    try:
        pack(args.data, args.out, imgsz=args.imgsz, quality=args.quality, parts=args.parts,
             log=lambda line: print(line, flush=True))
    except (PackError, YoloFormatError, ValueError) as exc:
        print(f"gridwatch dataset pack: {exc}", file=sys.stderr)
        return 2
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from training.data.sources import SourceError

    try:
        sources = _sources(None, args.root)
    except SourceError as exc:
        print(f"gridwatch dataset sources: {exc}", file=sys.stderr)
        return 2
    for s in sources:
        mapped = ", ".join(f"{k}->{v or 'drop'}" for k, v in s.class_map.items())
        print(f"{s.name} [{s.format}] {s.path}{'' if s.path.exists() else ' (missing)'}")
        print(f"  licence: {s.licence}\n  attribution: {s.attribution}\n  classes: {mapped}")
    return 0
