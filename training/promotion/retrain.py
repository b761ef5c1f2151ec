"""`gridwatch retrain`: the city's reviewed frames back into the model.

    base sources (datasets/*.yaml) + review exports (`gridwatch review export`)
      -> one built dataset (review frames split by camera and day)
      -> fine-tune from the current default in weights/ (not from COCO), at its input size; a class
         refit (--refit-classes) teaches only some score rows, and its int8 file is the served one
         with those rows grafted in, every other class's int8 weights kept byte for byte
      -> challenger and champion on the same base real val split and the same review val split
      -> promote into weights/ only if not worse on the base split and better on the review split

Review frames of one camera on one day look alike (the same street, the same bins), so
they are one split group: a group is all train or all val, and near-duplicates across days
are kept together by the build's perceptual-hash clusters as for every other source. The
running service takes a promoted model from weights/ by itself (serving/live_model.py).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detector.files import sha256_file
from detector.model import ModelInfo
from training.data.dataset_build import BuildOptions, build
from training.data.dataset_manifest import RealImage
from training.promotion.model_card import ModelCard, ReviewCounts
from training.data.sources import Source, SourceError, all_sources, source_from_file
from training.fit.train import STEM, TrainError, finish_run, train

CASE_DAY = re.compile(r"^GW(\d{8})-")  # case numbers are GW{yyyymmdd}-{instance}-{row}
LABELLED_DAY = re.compile(r"-(\d{8})T\d{6}Z-[0-9a-f]+$")  # labelling-mode frames: label-{camera}-{time}-{hash}
LABEL_KINDS = (("human", "human"), ("pseudo", "pseudo"), ("negative", "negatives"))  # card name, manifest key


@dataclass
class RetrainOptions:
    reviews: Sequence[Path]
    epochs: int = 10
    hours: float | None = None  # Ultralytics' `time`: a training budget that overrides epochs
    imgsz: int | None = None  # None: the served model's input size (416 where weights/ has none)
    batch: int = 16
    device: str | None = None
    workers: int = 2
    plots: bool = True
    weights_dir: Path | None = None
    project: Path = Path("runs/retrain")
    name: str | None = None
    # the dataset build's options (`gridwatch dataset build`)
    sources: Sequence[Source] | None = None  # base sources (default: all of datasets/)
    limit: int | None = None
    val_fraction: float = 0.15
    image_size: int = 640  # re-encode larger images to this max side
    synthetic: int = 600  # synthetic flyer/banner images, as the shipped model had: without them it forgets both
    crops: int = 0  # native-resolution crops' tile size (training/data/crops.py); 0: none
    repeat_threshold: float | None = None  # repeat-factor sampling (training/fit/sampling.py); None: off
    refit_classes: Sequence[str] = ()  # train only these classes' score rows (training.fit.trainer.ClassRefit)
    pseudo_labels: bool = True
    teacher_cache: Path | None = None
    extra: dict = field(default_factory=dict)
    force_reason: str | None = None  # promote although a rule class fell (training.promotion.promote); goes on the card


@dataclass(frozen=True)
class ReviewFrame:
    stem: str
    camera: str
    day: str
    labels: dict[str, list[str]]  # label kind (human, pseudo, negative) -> class per box


def review_source(folder: Path) -> Source:
    """A review export as a dataset source: its own source.yaml, paths relative to the folder."""
    definition = Path(folder) / "source.yaml"
    if not definition.is_file():
        raise TrainError(f"--review {folder}: no source.yaml (make it with `gridwatch review export --out {folder}`)")
    try:
        return source_from_file(definition, root=Path(folder).resolve())
    except SourceError as exc:
        raise TrainError(f"--review {folder}: {exc}") from None


def review_frames(folder: Path) -> dict[str, ReviewFrame]:
    """stem -> what the export's manifest.json says about the frame."""
    try:
        frames = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))["frames"]
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"--review {folder}: unreadable manifest.json ({exc})") from None
    out = {}
    for stem, frame in frames.items():
        day = CASE_DAY.match(frame.get("case_number") or "") or LABELLED_DAY.search(stem)
        out[stem] = ReviewFrame(stem=stem, camera=frame.get("camera") or "unknown", day=day.group(1) if day else "",
                                labels={kind: [cls for cls, _ in frame.get(key, [])] for kind, key in LABEL_KINDS})
    return out


def split_groups(source: Source, frames: dict[str, ReviewFrame]) -> dict[Path, str]:
    """Each review image's split group: its camera and day (across exports, the same camera-day
    is the same group)."""
    groups = {}
    for image in sorted((source.path / "images").iterdir()):
        frame = frames.get(image.stem)
        groups[image] = f"review:{frame.camera}/{frame.day}" if frame else "review:unknown/"
    return groups


def review_counts(images: Sequence[RealImage], frames: dict[str, dict[str, ReviewFrame]]) -> ReviewCounts:
    """camera -> class -> "human train", "negative val", ... -> boxes, over the review frames
    that made it into the dataset (after its duplicate checks)."""
    counts: dict[str, dict[str, Counter]] = {}
    for image in images:
        frame = frames.get(image.source, {}).get(Path(image.original).stem)
        if frame is None:
            continue
        for kind, classes in frame.labels.items():
            for cls in classes:
                counts.setdefault(frame.camera, {}).setdefault(cls, Counter())[f"{kind} {image.split}"] += 1
    return {cam: {cls: dict(c) for cls, c in sorted(by_class.items())} for cam, by_class in sorted(counts.items())}


def default_start(weights_dir: Path, cache_dir: Path, calibration: Sequence[Path], count: int = 32) -> Path:
    """The current default (weights/gridwatch-fp32.onnx) as a trainable .pt, built once per file.

    weights/ ships ONNX only; its fp32 file holds the trained weights with batch-norm folded in,
    which the bootstrap rebuild (training/fit/bootstrap.py) turns back into a YOLOv8n, with
    batch-norm statistics measured on training images at the model's own input size.
    """
    import cv2

    from training.fit.bootstrap import calibrate_batchnorm, rebuild, save_checkpoint

    champion = weights_dir / f"{STEM}-fp32.onnx"
    if not champion.is_file():
        raise TrainError(f"no current default to fine-tune from: {champion} is missing")
    target = cache_dir / f"{STEM}-{sha256_file(champion)[:16]}.pt"
    if target.is_file():
        return target
    served = served_model(champion)
    model = rebuild(champion)
    step = max(1, len(calibration) // count)
    images = [im for p in list(calibration)[::step][:count] if (im := cv2.imread(str(p))) is not None]
    if images:
        calibrate_batchnorm(model, images, size=max(served.input_hw))
    licence = f"AGPL-3.0 (rebuilt from {champion.name}, {served.metadata.get('gridwatch_model_version', 'unversioned')})"
    return save_checkpoint(model, target, champion, licence=licence)


def served_model(path: Path) -> ModelInfo:
    """What a model file in weights/ says about itself (detector.model), or a TrainError naming it."""
    from detector.model import DetectorError, open_session

    try:
        return open_session(path, threads=1)[1]
    except DetectorError as exc:
        raise TrainError(f"{path}: not a readable ONNX file ({exc})") from None


def training_size(options: RetrainOptions, weights_dir: Path) -> tuple[int, Path | None]:
    """The input size to train at, and the served int8 file a class refit's rows are grafted into.

    A refit changes nothing but some score rows, so its int8 file is the served one with those rows
    replaced (training/export/row_graft.py) rather than a fresh calibration that moves every class
    a little. The rows are grafted into a file exported at one size: a refit at another size is
    refused here, before the build and the training, not after them."""
    served = [weights_dir / f"{STEM}-{kind}.onnx" for kind in ("int8", "fp32")]
    sizes = {path: max(served_model(path).input_hw) for path in served if path.is_file()}
    imgsz = options.imgsz or next(iter(sizes.values()), 416)
    int8 = served[0] if options.refit_classes and served[0] in sizes else None
    if int8 is not None and sizes[int8] != imgsz:
        raise TrainError(f"--refit-classes grafts the refit rows into the served {int8}, exported at {sizes[int8]} px: "
                         f"train at --imgsz {sizes[int8]} (or leave --imgsz out), not {imgsz}")
    return imgsz, int8


def retrain(options: RetrainOptions, log: Callable[[str], None] = print) -> ModelCard:
    from datetime import datetime, timezone

    from training.offline import ultralytics_offline
    from training.fit.train import WEIGHTS_DIR

    if not options.reviews:
        raise TrainError("nothing to retrain on: pass --review DIR (a `gridwatch review export` folder)")
    reviews = [review_source(folder) for folder in options.reviews]
    names = [s.name for s in reviews]
    if len(set(names)) < len(names):
        raise TrainError(f"two review folders share a name ({', '.join(names)}): review sources are named by folder")
    base = list(options.sources) if options.sources is not None else all_sources()
    clash = set(names) & {s.name for s in base}
    if clash:
        raise TrainError(f"review folder named like a base source: {', '.join(sorted(clash))}")
    frames = {s.name: review_frames(folder) for s, folder in zip(reviews, options.reviews)}
    groups = {image: key for s in reviews for image, key in split_groups(s, frames[s.name]).items()}

    weights_dir = Path(options.weights_dir or WEIGHTS_DIR)
    imgsz, int8_from = training_size(options, weights_dir)
    project = Path(options.project).resolve()
    name = options.name or f"{STEM}-retrain-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run_dir = project / name
    built = build(BuildOptions(
        sources=base + reviews, out=run_dir / "dataset", val_fraction=options.val_fraction,
        pseudo_labels=options.pseudo_labels, imgsz=options.image_size, limit=options.limit, synthetic=options.synthetic,
        crops=options.crops,
        cache_dir=options.teacher_cache, split_groups=groups, fully_labelled=frozenset(names),
    ), log=log)
    review_images = [im for im in built.images if isinstance(im, RealImage) and im.source in names]
    counts = review_counts(review_images, frames)
    review_val = sum(im.split == "val" for im in review_images)
    log(f"review frames: {len(review_images)} (train {len(review_images) - review_val}, val {review_val}) "
        f"from cameras {', '.join(counts) or 'none'}")
    # Both judging splits must exist before hours of training, not after.
    if not review_val or review_val == len(review_images):
        raise TrainError(f"review frames on one side of the split only ({len(review_images) - review_val} train, "
                         f"{review_val} val): training and judging on them needs reviewed frames of at least "
                         "two cameras or days (export more reviews)")
    if not any(isinstance(im, RealImage) and im.split == "val" and im.source not in names for im in built.images):
        raise TrainError("the base real val split is empty: build from more images (raise --limit)")
    data = run_dir / "dataset" / "data.yaml"

    ultralytics_offline()
    train_images = sorted((run_dir / "dataset" / "images" / "train").iterdir())
    start = default_start(weights_dir, project / ".start", train_images)
    log(f"fine-tuning from the current default ({weights_dir / f'{STEM}-fp32.onnx'}) rebuilt as {start}")
    extra = dict(options.extra)
    if options.hours:
        extra["time"] = options.hours
    result = train(data, start, epochs=options.epochs, imgsz=imgsz, batch=options.batch,
                   device=options.device, project=project, name=f"{name}/train", workers=options.workers,
                   plots=options.plots, repeat_threshold=options.repeat_threshold,
                   refit_classes=options.refit_classes, extra=extra)
    return finish_run(result, data, promote=True, weights_dir=weights_dir, review_sources=reviews,
                      review_data=counts, force_reason=options.force_reason, int8_from=int8_from, log=log)

