"""What `gridwatch eval` says beside the AP table: progress while it runs, whether the images it
scored were the model's own training images, and the images it got most wrong.

    progress      a line every PROGRESS_S seconds (a 100-second eval is not silent)
    overlap       eval images whose content (sha256) or built name is in the model's training
                  split, from the dataset manifest the model's metadata points at
    --save-errors per image, false positives and misses at the operating threshold (IoU 0.5,
                  same class), worst first: errors.json and each image drawn with them
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detector.boxes import box_iou
from detector.detections import Detections
from training.evaluation.evaluate import EvalSet, Predictor

PROGRESS_S = 10.0
MATCH_IOU = 0.5


class Recorder:
    """The predictor, counting (and keeping, for --save-errors) what it returns, with a progress line."""

    def __init__(self, predict: Predictor, total: int, log: Callable[[str], None], keep: bool = False,
                 every_s: float = PROGRESS_S) -> None:
        self.predict, self.total, self.log, self.keep, self.every_s = predict, total, log, keep, every_s
        self.found: list[Detections] = []
        self.done = 0
        self.started = self.last = time.monotonic()

    def __call__(self, frame: np.ndarray) -> Detections:
        detections = self.predict(frame)
        self.done += 1
        if self.keep:
            self.found.append(detections)
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.started)
            self.log(f"  scored {self.done}/{self.total} images ({now - self.started:.0f} s, "
                     f"about {(self.total - self.done) / rate:.0f} s left)")
        return detections


# ---------------------------------------------------------------- overlap with training


@dataclass(frozen=True)
class Overlap:
    images: int  # eval images that were training images
    total: int
    manifest: Path
    examples: list[str]

    def warning(self) -> str:
        return (f"WARNING: {self.images} of {self.total} images scored are in the model's training set "
                f"({self.manifest}), e.g. {', '.join(self.examples)}: their AP is not held out; score the built "
                "dataset's val split (`--data BUILD --split val`) for a held-out figure")


def training_data_of(model: Path) -> Path | None:
    """The data.yaml the model was trained on: from the ONNX metadata, or the .pt's train args."""
    try:
        if model.suffix == ".pt":
            from training.export.export import read_checkpoint_args

            data = read_checkpoint_args(model).get("data")
        else:
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
            data = json.loads(meta.get("gridwatch_train_args", "{}")).get("data")
    except Exception:  # noqa: BLE001 - no readable lineage means no check, never a failed eval
        return None
    return Path(data) if data else None


def training_overlap(model: Path, eval_set: EvalSet) -> Overlap | None:
    """Eval images that were in the model's train split, by content or by built name; None when
    the model's dataset manifest is not here to tell."""
    data = training_data_of(model)
    manifest = data.parent / "manifest.json" if data is not None else None
    if manifest is None or not manifest.is_file():
        return None
    try:
        images = json.loads(manifest.read_text(encoding="utf-8")).get("images", [])
    except (OSError, ValueError):
        return None
    train = [im for im in images if im.get("split") == "train"]
    shas = {im["sha256"] for im in train if im.get("sha256")}
    names = {Path(im["file"]).name for im in train if im.get("file")}
    built_train = (data.parent / "images" / "train").resolve()
    hits = []
    for image in eval_set.images:
        path = Path(image.path)
        if path.resolve().parent == built_train or path.name in names or \
                hashlib.sha256(path.read_bytes()).hexdigest() in shas:
            hits.append(path.name)
    return Overlap(len(hits), len(eval_set.images), manifest, hits[:3]) if hits else None


# ---------------------------------------------------------------- per-image errors


@dataclass
class ImageErrors:
    image: str
    false_positives: list[dict] = field(default_factory=list)  # {class, score, box}
    misses: list[dict] = field(default_factory=list)  # {class, box}
    hits: int = 0

    @property
    def count(self) -> int:
        return len(self.false_positives) + len(self.misses)


def image_errors(eval_set: EvalSet, found: Sequence[Detections], threshold: float) -> list[ImageErrors]:
    """Per image, at the operating threshold: detections matching no labelled box of their class at
    IoU 0.5 (highest score first, each box matched once) and labelled boxes no detection matched.
    Worst (most errors) first."""
    out = []
    for image, detections in zip(eval_set.images, found):
        keep = detections.scores >= threshold
        boxes, scores = detections.xyxy[keep], detections.scores[keep]
        classes = [detections.names.get(int(c), str(c)) for c in detections.class_ids[keep]]
        truth = np.asarray(image.boxes, np.float64).reshape(-1, 4)
        taken = np.zeros(len(truth), bool)
        errors = ImageErrors(image=str(image.path))
        ious = box_iou(boxes.astype(np.float64), truth) if len(boxes) and len(truth) else np.zeros((len(boxes), 0))
        for i in np.argsort(-scores, kind="stable"):
            same = np.array([c == classes[i] for c in image.classes], bool) & ~taken
            best = int(np.argmax(np.where(same, ious[i], -1))) if same.any() else -1
            if best >= 0 and ious[i, best] >= MATCH_IOU:
                taken[best] = True
                errors.hits += 1
            else:
                errors.false_positives.append({"class": classes[i], "score": round(float(scores[i]), 3),
                                               "box": [round(float(v), 1) for v in boxes[i]]})
        errors.misses = [{"class": c, "box": [round(float(v), 1) for v in b]}
                         for b, c, t in zip(truth, image.classes, taken) if not t]
        out.append(errors)
    return sorted(out, key=lambda e: (-e.count, e.image))


def save_errors(errors: list[ImageErrors], folder: Path, split: str) -> Path:
    """errors.json (worst first) and, for each image with an error, the image with its misses (red),
    false positives (orange) and labelled boxes found (green) drawn, named by rank."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrong = [e for e in errors if e.count]
    for rank, e in enumerate(wrong, 1):
        frame = cv2.imread(e.image, cv2.IMREAD_COLOR)
        if frame is None:
            continue
        for item, colour in [(m, (0, 0, 255)) for m in e.misses] + [(f, (0, 140, 255)) for f in e.false_positives]:
            x1, y1, x2, y2 = (int(round(v)) for v in item["box"])
            cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 2)
            label = item["class"] + (f" {item['score']:.2f}" if "score" in item else " missed")
            cv2.putText(frame, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        cv2.imwrite(str(folder / f"{rank:04d}-{Path(e.image).stem}.jpg"), frame)
    summary = {"split": split, "images": len(errors), "images_with_errors": len(wrong),
               "false_positives": sum(len(e.false_positives) for e in errors),
               "misses": sum(len(e.misses) for e in errors),
               "worst_first": [{**asdict(e), "errors": e.count} for e in wrong]}
    path = folder / "errors.json"
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
