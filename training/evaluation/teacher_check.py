"""How much of the COCO teacher's knowledge a model kept, class by class (issue #28, item 2).

None of the sources has human labels for the context classes (truck, bus, umbrella, person, car,
bicycle, motorcycle): they were learnt from the teacher's pseudo-labels, and a model drifts away
from them as it trains on the violation classes. So the teacher's own boxes on real images are
the reference: of the boxes a teacher file finds at >= 0.5, the share the model also finds (same
class, >= 0.5, IoU >= 0.5, one to one). `ours` counts the model's boxes at >= 0.5, so a model that
finds more than the teacher shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.boxes import box_iou
from detector.detections import Detections
from detector.runtime import DEFAULT_SCORE_THRESHOLD, Detector
from training.data.pseudo_labels import COCO_TEACHER, SECOND_TEACHER

TEACHERS = (COCO_TEACHER, SECOND_TEACHER)
CONTEXT_CLASSES = ("truck", "bus", "umbrella", "person", "car", "bicycle", "motorcycle")
FOUND_SCORE, FOUND_IOU = 0.5, 0.5


def boxes_of(detections: Detections, name: str, score: float = FOUND_SCORE) -> np.ndarray:
    """The xyxy boxes of one class at or above `score`."""
    keep = [i for i, n in enumerate(detections.class_names) if n == name and detections.scores[i] >= score]
    return detections.xyxy[keep]


def matched(reference: np.ndarray, found: np.ndarray, iou: float = FOUND_IOU) -> int:
    """Reference boxes matched one to one by a found box at IoU >= `iou` (greedy, best pair first)."""
    if not len(reference) or not len(found):
        return 0
    overlap = box_iou(reference.astype(np.float32), found.astype(np.float32))
    n = 0
    while overlap.size and overlap.max() >= iou:
        i, j = np.unravel_index(int(overlap.argmax()), overlap.shape)
        overlap[i, :], overlap[:, j] = -1, -1
        n += 1
    return n


@dataclass(frozen=True)
class TeacherCheck:
    model: str  # the file measured
    images: int
    # teacher file name -> class -> {"teacher": its boxes, "found": of them the model's, "ours": the model's boxes}
    counts: dict[str, dict[str, dict[str, int]]]

    def to_dict(self) -> dict:
        return {"model": self.model, "images": self.images, "score": FOUND_SCORE, "iou": FOUND_IOU,
                "counts": self.counts}

    def lines(self) -> list[str]:
        out = []
        for teacher, classes in self.counts.items():
            for name, c in classes.items():
                share = f"{c['found'] / c['teacher']:.0%}" if c["teacher"] else "-"
                out.append(f"{teacher}: {name:<11} found {c['found']:>4} of {c['teacher']:>4} ({share}); "
                           f"the model's own {c['ours']}")
        return out


def compare_to_teachers(model: Path, images: Iterable[Path], teachers: Sequence[Path] = TEACHERS,
                        classes: Sequence[str] = CONTEXT_CLASSES) -> TeacherCheck | None:
    """The model against each teacher file that exists, on the same images (None: no teacher here)."""
    present = [t for t in teachers if t.is_file()]
    if not present:
        return None
    # Both run as the service runs them and are cut at FOUND_SCORE after: int8 scores land on 0.5
    # exactly, which a detector set to 0.5 drops (Ultralytics' `>`) and this count keeps.
    ours = Detector(model, score_threshold=DEFAULT_SCORE_THRESHOLD)
    refs = {t.name: Detector(t, score_threshold=DEFAULT_SCORE_THRESHOLD) for t in present}
    counts = {t: {name: {"teacher": 0, "found": 0, "ours": 0} for name in classes} for t in refs}
    n = 0
    for path in images:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            continue  # the evaluation proper reports unreadable images
        n += 1
        mine = ours(frame)
        for t, detector in refs.items():
            theirs = detector(frame)
            for name in classes:
                reference, found = boxes_of(theirs, name), boxes_of(mine, name)
                c = counts[t][name]
                c["teacher"] += len(reference)
                c["found"] += matched(reference, found)
                c["ours"] += len(found)
    return TeacherCheck(model=model.name, images=n, counts=counts)
