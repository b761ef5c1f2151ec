"""Detection metrics from labels and predictions: arithmetic only, no files, no model.

The arithmetic mirrors Ultralytics' validator so the numbers are comparable with `model.val()`:
- predictions at score >= 0.001, NMS IoU 0.7, at most 300 per image (the predictor's part);
- each prediction, in descending score order, claims the best still-unclaimed label of
  its class, separately at each IoU threshold 0.50:0.05:0.95;
- AP is the area under the precision envelope, 101-point interpolated (COCO).
Precision and recall are reported at the model's *operating* threshold (the score the
service filters at, IoU 0.5), not at Ultralytics' max-F1 point: they say what a reviewer
would see.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detector.boxes import box_iou
from detector.detections import Detections
from detector.runtime import DEFAULT_SCORE_THRESHOLD

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
AP_SCORE_THRESHOLD = 0.001  # as Ultralytics' val: AP needs the whole ranking
CONFUSION_IOU = 0.45
FEW_INSTANCES = 30  # below this many val boxes one hit or miss moves a class's AP by points


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    boxes: np.ndarray  # (M, 4) xyxy pixels
    classes: list[str]  # gridwatch class name per box


@dataclass(frozen=True)
class ClassMetrics:
    ap50: float
    ap50_95: float
    precision: float
    recall: float
    instances: int


@dataclass
class EvalResult:
    classes: dict[str, ClassMetrics]
    map50: float
    map50_95: float
    operating_threshold: float = DEFAULT_SCORE_THRESHOLD
    images: int = 0
    # For plots only; not part of the JSON contract.
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    confusion: np.ndarray | None = field(default=None, repr=False)
    confusion_names: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """Exactly the `gridwatch eval --json` object."""
        return {
            "classes": {name: asdict(m) for name, m in self.classes.items()},
            "map50": self.map50,
            "map50_95": self.map50_95,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def table(self) -> str:
        lines = [
            f"{'class':<16}{'instances':>10}{'AP50':>8}{'AP50-95':>9}{'P@op':>8}{'R@op':>8}",
        ]
        for name, m in self.classes.items():
            lines.append(
                f"{name:<16}{m.instances:>10}{m.ap50:>8.3f}{m.ap50_95:>9.3f}{m.precision:>8.3f}{m.recall:>8.3f}"
            )
        total = sum(m.instances for m in self.classes.values())
        lines.append(f"{'all':<16}{total:>10}{self.map50:>8.3f}{self.map50_95:>9.3f}")
        lines.append(
            f"{self.images} images; P/R at score >= {self.operating_threshold} and IoU 0.5; "
            f"AP from scores >= {AP_SCORE_THRESHOLD}"
        )
        return "\n".join(lines)


def match_predictions(
    pred_classes: np.ndarray, true_classes: np.ndarray, iou: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS
) -> np.ndarray:
    """(N,) predictions in descending score order vs (M,) labels; iou is (M, N).

    Returns (N, T) booleans: correct at each IoU threshold (Ultralytics' greedy matching).
    """
    correct = np.zeros((len(pred_classes), len(thresholds)), bool)
    if len(pred_classes) == 0 or len(true_classes) == 0:
        return correct
    iou = iou * (true_classes[:, None] == pred_classes[None, :])
    matched = np.zeros((iou.shape[0], len(thresholds)), bool)
    cols = np.arange(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, cols] >= thresholds
        matched[k, cols] |= correct[j]
    return correct


_AP_X = np.linspace(0, 1, 101)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """COCO 101-point interpolated area under the precision envelope."""
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    ap = float(np.trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))
    return ap, mpre, mrec


def class_metrics(
    correct: np.ndarray, scores: np.ndarray, n_labels: int, operating_threshold: float
) -> tuple[ClassMetrics, tuple[np.ndarray, np.ndarray]]:
    """One class's metrics and its PR curve at IoU 0.5, from its predictions' (N, T) correctness
    and scores over the whole set."""
    if n_labels == 0:
        raise ValueError("metrics need at least one label")
    order = np.argsort(-scores, kind="stable")
    correct, scores = correct[order], scores[order]
    if len(scores) == 0:
        return ClassMetrics(0.0, 0.0, 0.0, 0.0, n_labels), (np.zeros(1), np.zeros(1))
    tpc = correct.cumsum(0)
    fpc = (~correct).cumsum(0)
    recall = tpc / n_labels
    precision = tpc / (tpc + fpc)
    aps = []
    curve = (np.zeros(1), np.zeros(1))
    for t in range(correct.shape[1]):
        ap, mpre, mrec = compute_ap(recall[:, t], precision[:, t])
        aps.append(ap)
        if t == 0:
            curve = (mrec, mpre)
    kept = scores >= operating_threshold
    tp_op = int(correct[kept, 0].sum())
    n_kept = int(kept.sum())
    return (
        ClassMetrics(
            ap50=round(aps[0], 4),
            ap50_95=round(float(np.mean(aps)), 4),
            precision=round(tp_op / n_kept, 4) if n_kept else 0.0,
            recall=round(tp_op / n_labels, 4),
            instances=n_labels,
        ),
        curve,
    )


def evaluate_predictions(
    images: Sequence[LabelledImage],
    predictions: Iterable[Detections],
    operating_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> EvalResult:
    """Metrics for the classes present in `images`, given one Detections per image."""
    present = sorted({c for image in images for c in image.classes})
    index = {name: i for i, name in enumerate(present)}
    n = len(present)
    confusion = np.zeros((n + 1, n + 1), np.int64)  # rows predicted, cols true; last = background
    per_class: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in present}
    for image, det in zip(images, predictions, strict=True):
        names = det.class_names
        # Classes the folder has no labels for are not judged: the source never labelled them.
        keep = np.array([nm in index for nm in names], bool)
        det = det[keep] if len(det) else det
        pred_cls = np.array([index[nm] for nm in det.class_names], np.int64)
        order = np.argsort(-det.scores, kind="stable")
        boxes, scores, pred_cls = det.xyxy[order], det.scores[order], pred_cls[order]
        true_cls = np.array([index[c] for c in image.classes], np.int64)
        iou = box_iou(image.boxes.astype(np.float64), boxes.astype(np.float64))
        correct = match_predictions(pred_cls, true_cls, iou)
        for c, name in enumerate(present):
            mask = pred_cls == c
            per_class[name].append((correct[mask], scores[mask]))
        operating = scores >= operating_threshold
        _count_confusion(confusion, pred_cls[operating], boxes[operating], true_cls, image.boxes, n)

    classes: dict[str, ClassMetrics] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in present:
        n_labels = sum(c == name for image in images for c in image.classes)
        parts = per_class[name]
        correct = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 10), bool)
        scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        classes[name], curves[name] = class_metrics(correct, scores, n_labels, operating_threshold)
    map50 = round(float(np.mean([m.ap50 for m in classes.values()])), 4) if classes else 0.0
    map50_95 = round(float(np.mean([m.ap50_95 for m in classes.values()])), 4) if classes else 0.0
    return EvalResult(
        classes=classes,
        map50=map50,
        map50_95=map50_95,
        operating_threshold=operating_threshold,
        images=len(images),
        pr_curves=curves,
        confusion=confusion,
        confusion_names=present + ["background"],
    )


def _count_confusion(
    confusion: np.ndarray, pred_cls: np.ndarray, pred_boxes: np.ndarray,
    true_cls: np.ndarray, true_boxes: np.ndarray, background: int,
) -> None:
    iou = box_iou(true_boxes.astype(np.float64), pred_boxes.astype(np.float64))
    used_pred: set[int] = set()
    pairs = np.argwhere(iou > CONFUSION_IOU)
    pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]])] if len(pairs) else pairs
    used_true: set[int] = set()
    for t, p in pairs:
        if t in used_true or p in used_pred:
            continue
        used_true.add(int(t))
        used_pred.add(int(p))
        confusion[pred_cls[p], true_cls[t]] += 1
    for t in range(len(true_cls)):
        if t not in used_true:
            confusion[background, true_cls[t]] += 1
    for p in range(len(pred_cls)):
        if p not in used_pred:
            confusion[pred_cls[p], background] += 1
