"""Drawing detections onto a copy of a frame (annotated evidence, `detect --save`)."""

from __future__ import annotations

import cv2
import numpy as np

from detector.detections import Detections


def _colour(class_id: int) -> tuple[int, int, int]:
    # A fixed, well-spread hue per class so the same class keeps its colour everywhere.
    hue = (class_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def annotate(frame: np.ndarray, detections: Detections) -> np.ndarray:
    """A new image with each box and its class name and score; the input stays untouched."""
    out = frame.copy()
    thickness = max(1, round(min(frame.shape[:2]) / 400))
    scale = max(0.4, min(frame.shape[:2]) / 1200)
    for box, score, class_id, name in zip(
        detections.xyxy, detections.scores, detections.class_ids, detections.class_names
    ):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(class_id))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, label, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return out
