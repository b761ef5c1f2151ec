"""Context-class pseudo-labels from the COCO teacher (../shared/weights/coco-yolov8n-int8.onnx).

No source labels people, cars, umbrellas or tables, yet the rules need them. The COCO
model sees them well enough to label them for us: we keep its boxes of the context
classes above a score and mark them as pseudo-labels in the manifest.

Score 0.4: the teacher's unlabelled misses only cost the student some recall on
context classes (they become background), while its false boxes teach wrong objects
with full weight. Ultralytics' 0.25 predict default is tuned for recall; pseudo-labelling
practice (e.g. the "unbiased teacher" and STAC papers use 0.7-0.9 on two-stage models)
keeps fewer, surer boxes; for this small int8 YOLOv8n 0.4 keeps most true people and cars
while its typical false boxes (a bin called a chair, a cart called a truck) mostly sit below
it, and the conflict rule below removes the rest where a human said otherwise.

Teacher outputs are cached per image (sha256 of the file) under runs/cache, above a low
floor score, so rebuilds and threshold changes do not run the model again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.boxes import box_iou
from detector.files import REPO_ROOT, SHARED_DIR, sha256_file

# The COCO YOLOv8n: the teacher here, and the pretrained start training rebuilds from it.
COCO_TEACHER = SHARED_DIR / "weights" / "coco-yolov8n-int8.onnx"
# The second COCO model: a different architecture at 320 px sees some trucks the first misses.
SECOND_TEACHER = SHARED_DIR / "weights" / "coco-yolo11n-320-int8.onnx"
# Road vehicles get a second look: both teachers, each on the frame and on its mirror image.
# A truck that all four views agree on at a modest score is a truck; one view alone at the same
# score is more often a cart, a kiosk or a van. The fused score is the mean over the views
# (a view that missed it counts 0), so agreement is what lifts a box over VIEW_SCORE.
VEHICLE_CLASSES = frozenset(["truck", "bus"])
VIEW_SCORE = 0.3
VIEW_IOU = 0.5
VEHICLE_CANDIDATE = 0.2  # the first teacher's truck/bus score that earns a frame the second look
DEFAULT_CACHE = REPO_ROOT / "runs" / "cache" / "teacher"
DEFAULT_SCORE = 0.4
CACHE_FLOOR = 0.1  # cached detections go this low, so any threshold >= it needs no rerun

CONTEXT_CLASSES = frozenset(
    ["person", "bicycle", "car", "motorcycle", "bus", "truck", "umbrella", "bench", "chair", "dining table"]
)

# Human class -> teacher classes that, placed on the same object, would contradict it.
# A push cart is what the teacher calls a truck, car, bicycle, motorcycle, bench or table;
# a bin it may call a chair or bench; a pile of rubbish often holds furniture that must not
# read as a shopfront's tables and chairs; and anything printed on a sign or window ad
# (faces, cars) is not a real person or car.
CONFLICTS: dict[str, frozenset[str]] = {
    "push_cart": frozenset(["truck", "car", "bicycle", "motorcycle", "bench", "dining table", "chair"]),
    "garbage_bin": frozenset(["chair", "bench", "dining table", "truck", "car"]),
    "bin_overflow": frozenset(["chair", "bench", "dining table", "truck", "car"]),
    "garbage_pile": frozenset(["chair", "bench", "dining table", "umbrella"]),
    "shop_sign": CONTEXT_CLASSES,
    "window_ad": CONTEXT_CLASSES,
    "flyer": CONTEXT_CLASSES,
    "banner": CONTEXT_CLASSES,
}
CONFLICT_IOU = 0.3  # same object, boxes drawn a little differently
CONFLICT_INSIDE = 0.6  # teacher box mostly inside the human box (a part of it, or a picture on it)


@dataclass
class PseudoLabels:
    boxes: np.ndarray  # (N, 4) float64 xyxy pixels
    classes: list[str]
    scores: list[float]
    suppressed: Counter = field(default_factory=Counter)  # "truck~push_cart" -> count


def conflicting(
    box: np.ndarray, name: str, human_boxes: np.ndarray, human_classes: list[str]
) -> str | None:
    """The human class this teacher box contradicts, or None."""
    if not len(human_boxes):
        return None
    iou = box_iou(box[None].astype(np.float32), human_boxes.astype(np.float32))[0]
    x1 = np.maximum(box[0], human_boxes[:, 0])
    y1 = np.maximum(box[1], human_boxes[:, 1])
    x2 = np.minimum(box[2], human_boxes[:, 2])
    y2 = np.minimum(box[3], human_boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    inside = inter / area
    for j, human in enumerate(human_classes):
        if name in CONFLICTS.get(human, ()) and (iou[j] > CONFLICT_IOU or inside[j] > CONFLICT_INSIDE):
            return human
    return None


class Teacher:
    """The COCO detector with a per-image cache of its raw context-class output."""

    def __init__(self, model: Path = COCO_TEACHER, cache_dir: Path = DEFAULT_CACHE, threads: int | None = None,
                 second: Path | None = None):
        model = Path(model)
        if not model.is_file():
            raise FileNotFoundError(f"teacher model {model} not found (expected ../shared/weights)")
        self.model = model
        self.cache_dir = Path(cache_dir) / sha256_file(model)[:16]
        self.threads = threads
        self._detector = None
        self.hits = self.misses = 0
        # the vehicle second look (both teachers, mirrored): only where the second file exists
        self.second = Path(second) if second is not None and Path(second).is_file() else None
        self._views: dict[str, object] = {}
        self.vehicle_looks = 0

    def _run(self, bgr: np.ndarray) -> dict:
        if self._detector is None:
            from detector import Detector

            self._detector = Detector(self.model, score_threshold=CACHE_FLOOR, threads=self.threads, spinning=False)
        det = self._detector(bgr)
        keep = [i for i, n in enumerate(det.class_names) if n in CONTEXT_CLASSES]
        return {
            "boxes": det.xyxy[keep].round(2).tolist(),
            "scores": det.scores[keep].round(4).tolist(),
            "classes": [det.class_names[i] for i in keep],
        }

    def _view_detector(self, model: Path):
        if model not in self._views:
            from detector import Detector

            self._views[model] = Detector(model, score_threshold=CACHE_FLOOR, threads=self.threads, spinning=False)
        return self._views[model]

    def vehicle_views(self, image_sha256: str, bgr: np.ndarray) -> list[dict]:
        """Truck and bus boxes from each of the four views (teacher x mirror), cached."""
        key = f"{image_sha256}.views-{sha256_file(self.second)[:8]}" if self.second else f"{image_sha256}.views"
        path = self.cache_dir / image_sha256[:2] / f"{key}.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        self.vehicle_looks += 1
        width = bgr.shape[1]
        views = []
        for model in [self.model] + ([self.second] if self.second else []):
            for mirrored in (False, True):
                det = self._view_detector(model)(bgr[:, ::-1].copy() if mirrored else bgr)
                keep = [i for i, n in enumerate(det.class_names) if n in VEHICLE_CLASSES]
                boxes = det.xyxy[keep].astype(np.float64)
                if mirrored and len(boxes):
                    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
                views.append({
                    "boxes": boxes.round(2).tolist(),
                    "scores": det.scores[keep].round(4).tolist(),
                    "classes": [det.class_names[i] for i in keep],
                })
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(views))
        tmp.replace(path)
        return views

    def raw(self, image_sha256: str, bgr: np.ndarray) -> dict:
        path = self.cache_dir / image_sha256[:2] / f"{image_sha256}.json"
        if path.exists():
            try:
                self.hits += 1
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                self.hits -= 1  # a torn write from an interrupted build: recompute
        self.misses += 1
        out = self._run(bgr)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
        return out

    def label(
        self,
        image_sha256: str,
        bgr: np.ndarray,
        human_boxes: np.ndarray,
        human_classes: list[str],
        score: float = DEFAULT_SCORE,
    ) -> PseudoLabels:
        if score < CACHE_FLOOR:
            raise ValueError(f"pseudo-label score must be >= {CACHE_FLOOR} (the cache floor)")
        raw = self.raw(image_sha256, bgr)
        if self.second is not None and any(
            c in VEHICLE_CLASSES and s >= VEHICLE_CANDIDATE for c, s in zip(raw["classes"], raw["scores"])
        ):
            raw = with_agreed_vehicles(raw, self.vehicle_views(image_sha256, bgr), score)
        boxes, classes, scores, suppressed = [], [], [], Counter()
        human_boxes = np.asarray(human_boxes, np.float64).reshape(-1, 4)
        for box, s, name in zip(raw["boxes"], raw["scores"], raw["classes"]):
            if s < score:
                continue
            box = np.asarray(box, np.float64)
            clash = conflicting(box, name, human_boxes, human_classes)
            if clash:
                suppressed[f"{name}~{clash}"] += 1
                continue
            boxes.append(box)
            classes.append(name)
            scores.append(float(s))
        return PseudoLabels(np.asarray(boxes, np.float64).reshape(-1, 4), classes, scores, suppressed)


def fuse_views(views: list[dict]) -> list[tuple[list[float], str, float]]:
    """(box, class, fused score) per vehicle the views saw: greedy clusters by IoU across views.

    Truck and bus are one kind here (a head-on cab is either, view by view); a cluster's class
    is the one with the most summed score, its box the score-weighted mean.
    """
    entries = [(np.asarray(b, np.float64), c, float(s), v)
               for v, view in enumerate(views) for b, s, c in zip(view["boxes"], view["scores"], view["classes"])]
    entries.sort(key=lambda e: -e[2])
    used = [False] * len(entries)
    fused = []
    for i, (box, _, _, _) in enumerate(entries):
        if used[i]:
            continue
        members, seen_views = [], set()
        for j in range(i, len(entries)):
            if used[j] or entries[j][3] in seen_views:
                continue
            if box_iou(box[None].astype(np.float32), entries[j][0][None].astype(np.float32))[0, 0] >= VIEW_IOU:
                used[j] = True
                members.append(entries[j])
                seen_views.add(entries[j][3])
        weights = np.array([m[2] for m in members])
        mean_box = (np.stack([m[0] for m in members]) * weights[:, None]).sum(0) / weights.sum()
        by_class = Counter()
        for m in members:
            by_class[m[1]] += m[2]
        fused.append((mean_box.round(2).tolist(), by_class.most_common(1)[0][0], float(weights.sum() / len(views))))
    return fused


def with_agreed_vehicles(raw: dict, views: list[dict], score: float) -> dict:
    """`raw` plus the vehicles the views agree on (fused score >= VIEW_SCORE) that it lacks above `score`."""
    if not views:
        return raw
    kept = [np.asarray(b, np.float64) for b, s, c in zip(raw["boxes"], raw["scores"], raw["classes"])
            if s >= score and c in VEHICLE_CLASSES]
    out = {k: list(v) for k, v in raw.items()}
    for box, name, fused in fuse_views(views):
        if fused < VIEW_SCORE:
            continue
        b = np.asarray(box, np.float64)
        if kept and box_iou(b[None].astype(np.float32), np.stack(kept).astype(np.float32)).max() >= VIEW_IOU:
            continue  # the single view already keeps it
        kept.append(b)
        out["boxes"].append(box)
        out["scores"].append(max(fused, score))  # agreed: kept at the pseudo-label threshold
        out["classes"].append(name)
    return out
