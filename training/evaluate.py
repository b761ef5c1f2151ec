"""Detection metrics on a labelled folder, computed from the served artefact's own output.

numpy only (no torch, no Ultralytics): eval must run with the base install, on the ONNX
file exactly as `detector.Detector` serves it. The arithmetic mirrors Ultralytics'
validator so the numbers are comparable with `model.val()`:
- predictions at score >= 0.001, NMS IoU 0.7, at most 300 per image;
- each prediction, in descending score order, claims the best still-unclaimed label of
  its class, separately at each IoU threshold 0.50:0.05:0.95;
- AP is the area under the precision envelope, 101-point interpolated (COCO).
Precision and recall are reported at the model's *operating* threshold (the score the
service filters at, default 0.25, IoU 0.5), not at Ultralytics' max-F1 point: they say
what a reviewer would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from detector.boxes import box_iou
from detector.detections import Detections

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
AP_SCORE_THRESHOLD = 0.001  # as Ultralytics' val: AP needs the whole ranking
DEFAULT_OPERATING_THRESHOLD = 0.25
CONFUSION_IOU = 0.45
FEW_INSTANCES = 30  # below this many val boxes one hit or miss moves a class's AP by points
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

Predictor = Callable[[np.ndarray], Detections]


class EvalError(ValueError):
    """The evaluation folder or its labels are malformed; the message names the file."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    boxes: np.ndarray  # (M, 4) xyxy pixels
    classes: list[str]  # gridwatch class name per box


@dataclass(frozen=True)
class EvalSet:
    root: Path
    source: str
    images: list[LabelledImage]
    dropped_labels: int  # boxes of source classes the mapping drops


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
    operating_threshold: float = DEFAULT_OPERATING_THRESHOLD
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


# ---------------------------------------------------------------- reading the folder


def _read_data_yaml(path: Path) -> dict:
    root = path.parent
    if not path.is_file():
        raise EvalError(f"{root}: no data.yaml (expected images/, labels/ and data.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise EvalError(f"{path}: not valid YAML: {exc}") from exc
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise EvalError(f"{path}: 'names' must map class ids to names")
    data["names"] = {int(k): str(v) for k, v in names.items()}
    return data


def _image_dir(root: Path, data: dict) -> Path:
    base = root / str(data.get("path") or ".")
    for key in ("val", "test", "train"):
        value = data.get(key)
        if isinstance(value, str) and (base / value).is_dir():
            return base / value
    if (root / "images").is_dir():
        return root / "images"
    raise EvalError(f"{root}: no image folder (data.yaml val/train, or images/)")


def _label_path(image: Path) -> Path:
    # Ultralytics' rule: the last /images/ in the path becomes /labels/, suffix .txt.
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def class_mapping(source: str, names: Mapping[int, str], explicit: bool = True) -> dict[str, str | None]:
    """Source class name -> gridwatch class (None: dropped), from the dataset definition.

    A source named on purpose must exist. When the name merely defaults to the folder's
    and no definition has it, the folder is taken to be in gridwatch classes already
    (what `gridwatch dataset build` writes).
    """
    from training.sources import load_source

    try:
        definition = load_source(source)
    except ValueError as exc:
        if explicit:
            raise EvalError(str(exc)) from None
        return {n: n for n in names.values()}
    mapping = dict(definition.class_map)
    unknown = [n for n in names.values() if n not in mapping]
    if unknown:
        raise EvalError(f"dataset definition {source!r} does not say how to map classes {unknown}")
    return mapping


def load_eval_set(root: str | Path, source: str | None = None) -> EvalSet:
    root = Path(root)
    yaml_path = root / "data.yaml"
    if root.is_file() and root.suffix in (".yaml", ".yml"):  # DIR/data.yaml works as well as DIR
        yaml_path, root = root, root.parent
    elif not root.is_dir():
        raise EvalError(f"{root}: not a folder")
    data = _read_data_yaml(yaml_path)
    mapping = class_mapping(source or root.name, data["names"], explicit=source is not None)
    source = source or root.name
    return eval_set_from_images(_image_dir(root, data), data["names"], mapping, root=root, source=source)


def eval_set_from_images(
    image_dir: Path, names: Mapping[int, str], mapping: Mapping[str, str | None], *, root: Path, source: str
) -> EvalSet:
    """Every image under `image_dir` with its YOLO labels mapped to gridwatch classes."""
    paths = sorted(p for p in Path(image_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EvalError(f"{image_dir}: no images")
    images, dropped = [], 0
    for path in paths:
        boxes, classes, n_dropped = _read_labels(_label_path(path), _image_size(path), names, mapping)
        dropped += n_dropped
        images.append(LabelledImage(path=path, boxes=boxes, classes=classes))
    return EvalSet(root=root, source=source, images=images, dropped_labels=dropped)


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EvalError(f"{path}: unreadable image")
    return image.shape[1], image.shape[0]


def _read_labels(
    path: Path, size: tuple[int, int], names: Mapping[int, str], mapping: Mapping[str, str | None]
) -> tuple[np.ndarray, list[str], int]:
    if not path.is_file():
        return np.zeros((0, 4), np.float32), [], 0  # a background image
    w, h = size
    boxes, classes, dropped = [], [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            cls, cx, cy, bw, bh = int(fields[0]), *map(float, fields[1:5])
        except (ValueError, IndexError):
            raise EvalError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}") from None
        if cls not in names:
            raise EvalError(f"{path}:{n}: class id {cls} is not in data.yaml names")
        target = mapping.get(names[cls])
        if target is None:
            dropped += 1
            continue
        boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        classes.append(target)
    return np.asarray(boxes, np.float32).reshape(-1, 4), classes, dropped


# ---------------------------------------------------------------- the arithmetic


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


def _class_metrics(
    correct: np.ndarray, scores: np.ndarray, n_labels: int, operating_threshold: float
) -> tuple[ClassMetrics, tuple[np.ndarray, np.ndarray]]:
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
    eval_set: EvalSet,
    predictions: Iterable[Detections],
    operating_threshold: float = DEFAULT_OPERATING_THRESHOLD,
) -> EvalResult:
    """Metrics for the classes present in `eval_set`, given one Detections per image."""
    present = sorted({c for image in eval_set.images for c in image.classes})
    index = {name: i for i, name in enumerate(present)}
    n = len(present)
    confusion = np.zeros((n + 1, n + 1), np.int64)  # rows predicted, cols true; last = background
    per_class: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in present}
    counted = 0
    for image, det in zip(eval_set.images, predictions, strict=True):
        counted += 1
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
        _update_confusion(confusion, pred_cls[scores >= operating_threshold],
                          boxes[scores >= operating_threshold], true_cls, image.boxes, n)
    if counted != len(eval_set.images):
        raise EvalError(f"got predictions for {counted} of {len(eval_set.images)} images")

    classes: dict[str, ClassMetrics] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in present:
        n_labels = sum(c == name for image in eval_set.images for c in image.classes)
        parts = per_class[name]
        correct = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 10), bool)
        scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        classes[name], curves[name] = _class_metrics(correct, scores, n_labels, operating_threshold)
    map50 = round(float(np.mean([m.ap50 for m in classes.values()])), 4) if classes else 0.0
    map50_95 = round(float(np.mean([m.ap50_95 for m in classes.values()])), 4) if classes else 0.0
    return EvalResult(
        classes=classes,
        map50=map50,
        map50_95=map50_95,
        operating_threshold=operating_threshold,
        images=counted,
        pr_curves=curves,
        confusion=confusion,
        confusion_names=present + ["background"],
    )


def _update_confusion(
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


def evaluate(
    predict: Predictor,
    eval_set: EvalSet,
    operating_threshold: float = DEFAULT_OPERATING_THRESHOLD,
) -> EvalResult:
    def predictions() -> Iterable[Detections]:
        for image in eval_set.images:
            frame = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
            if frame is None:
                raise EvalError(f"{image.path}: unreadable image")
            yield predict(frame)

    return evaluate_predictions(eval_set, predictions(), operating_threshold)


def onnx_predictor(model_path: str | Path, threads: int | None = None) -> tuple[Predictor, dict[str, str]]:
    """The served runtime at AP's score threshold; returns it and the model's metadata."""
    from detector.runtime import Detector

    detector = Detector(model_path, score_threshold=AP_SCORE_THRESHOLD, iou_threshold=0.7,
                        max_detections=300, threads=threads)
    return detector, dict(detector.info.metadata)


def operating_threshold_of(metadata: Mapping[str, str]) -> float:
    """The score the model is served at: its card's threshold if the export recorded one."""
    try:
        return float(metadata.get("gridwatch_score_threshold", DEFAULT_OPERATING_THRESHOLD))
    except ValueError:
        return DEFAULT_OPERATING_THRESHOLD


# ---------------------------------------------------------------- plots


def write_plots(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """PR curves and the confusion matrix as PNG; matplotlib's bundled font, no downloads."""
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plots needs matplotlib: pip install 'gridwatch[train]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(8, 6), tight_layout=True)
    for name, (mrec, mpre) in result.pr_curves.items():
        ax.plot(mrec, mpre, linewidth=1.2, label=f"{name} {result.classes[name].ap50:.3f}")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall at IoU 0.5 (mAP50 {result.map50:.3f})")
    if result.pr_curves:
        ax.legend(loc="lower left", fontsize=8)
    path = out / "PR_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    if result.confusion is not None:
        names = result.confusion_names
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1 + 0.6 * len(names)), tight_layout=True)
        ax.imshow(result.confusion, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="True", ylabel="Predicted",
               title=f"Confusion at score >= {result.operating_threshold}, IoU > {CONFUSION_IOU}")
        for (r, c), v in np.ndenumerate(result.confusion):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7)
        path = out / "confusion_matrix.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
