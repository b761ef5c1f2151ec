"""Where the real test data lives: ../shared beside the repository (never copied in)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detector.files import REPO_ROOT, SHARED_DIR

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
