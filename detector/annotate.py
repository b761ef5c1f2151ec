"""The project's one box-drawing function: evidence copies, `gridwatch detect --save`."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detector.detections import Detections

RED = (0, 0, 255)


def class_colour(class_id: int) -> tuple[int, int, int]:
    # A fixed, well-spread hue per class so the same class keeps its colour everywhere.
    hue = (class_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Whole-pixel corners inside the frame, ordered; an empty box keeps x1 == x2 or y1 == y2."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = sorted((max(0, min(width - 1, x1)), max(0, min(width, x2))))
    y1, y2 = sorted((max(0, min(height - 1, y1)), max(0, min(height, y2))))
    return x1, y1, x2, y2


def draw_boxes(
    frame: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """A new image with each box and its label; the input stays untouched. Lines scale with
    the frame so a box stays visible on a 4K evidence frame."""
    out = frame.copy()
    h, w = frame.shape[:2]
    thickness = max(2, round(max(h, w) / 400))
    scale = max(0.5, thickness / 3)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = colours[i] if colours is not None else RED
        x1, y1, x2, y2 = clip_box(box, w, h)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        if label:
            cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness)
    return out


def annotate(frame: np.ndarray, detections: Detections) -> np.ndarray:
    """Every detection with its class name and score, one colour per class."""
    return draw_boxes(
        frame,
        detections.xyxy,
        [f"{name} {score:.2f}" for name, score in zip(detections.class_names, detections.scores)],
        [class_colour(int(c)) for c in detections.class_ids],
    )
