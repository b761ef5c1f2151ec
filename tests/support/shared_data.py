"""Where the real test data lives: ../shared beside the repository (never copied in)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detector.files import SHARED_DIR

# CI lays ../shared beside the clone; GRIDWATCH_SHARED_DIR points elsewhere for a local run.
SHARED = Path(os.environ.get("GRIDWATCH_SHARED_DIR") or SHARED_DIR)
DATASETS = SHARED / "datasets"
COCO_INT8 = SHARED / "weights" / "coco-yolov8n-int8.onnx"


def shared_available() -> bool:
    return COCO_INT8.is_file()


def require_shared() -> None:
    if not COCO_INT8.is_file():
        pytest.fail(f"../shared is missing: expected {COCO_INT8} (set GRIDWATCH_SHARED_DIR)")


def real_images(source: str, count: int, start: int = 0) -> list[Path]:
    """A deterministic spread of real images from one dataset folder."""
    require_shared()
    files = sorted((DATASETS / source / "images").glob("*.jpg"))
    step = max(1, len(files) // count)
    return files[start::step][:count]


def overflowing_bins(detector, count: int, min_score: float = 0.8) -> list[tuple[Path, list[float]]]:
    """Real garbage_overflow_cn photos in which `detector` (the shipped model) sees exactly one
    overflowing bin, sure of it: (image, its box)."""
    import cv2

    require_shared()
    picked = []
    for path in sorted((DATASETS / "garbage_overflow_cn" / "images").glob("*.jpg")):
        found = detector.detect([cv2.imread(str(path))])[0]
        bins = [(float(s), b) for b, s, c in zip(found.xyxy, found.scores, found.class_ids)
                if found.names[int(c)] == "bin_overflow" and s >= 0.25]
        if len(bins) == 1 and bins[0][0] >= min_score:
            picked.append((path, [float(v) for v in bins[0][1]]))
            if len(picked) == count:
                return picked
    pytest.fail(f"fewer than {count} garbage_overflow_cn images with one sure bin_overflow")


def street_without(detector, class_name: str, size: tuple[int, int]) -> Path:
    """A real facade_signs_spb photo in which `detector` sees no `class_name` at all, even
    when scaled to `size` (width, height)."""
    import cv2

    require_shared()
    for path in sorted((DATASETS / "facade_signs_spb" / "images").glob("*.jpg")):
        image = cv2.resize(cv2.imread(str(path)), size, interpolation=cv2.INTER_AREA)
        found = detector.detect([image])[0]
        if not any(found.names[int(c)] == class_name for c in found.class_ids):
            return path
    pytest.fail(f"no facade_signs_spb image without {class_name}")


def camera_frame(image):
    """A real photo as a 1920x1080 camera frame (scaled and centre-cropped)."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    scale = max(1920 / w, 1080 / h)
    image = cv2.resize(image, (round(w * scale), round(h * scale)))
    y0, x0 = (image.shape[0] - 1080) // 2, (image.shape[1] - 1920) // 2
    return np.ascontiguousarray(image[y0 : y0 + 1080, x0 : x0 + 1920])
