"""Test-time datasets for the training tests: real images from ../shared, built into tmp dirs.

Nothing here is copied into the repository; images are linked from ../shared into a
pytest tmp folder and labels are rewritten there in gridwatch classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRIDWATCH_SHARED_DIR") or REPO_ROOT.parent / "shared")
DATASETS = SHARED / "datasets"
TEACHER = SHARED / "weights" / "coco-yolov8n-int8.onnx"


def source_images(name: str, count: int, offset: int = 0) -> list[Path]:
    """`count` images of a source that have at least one label, spread over the folder."""
    folder = DATASETS / name / "images"
    paths = sorted(folder.iterdir())
    labelled = [p for p in paths if (DATASETS / name / "labels" / f"{p.stem}.txt").stat().st_size > 0]
    step = max(1, len(labelled) // (count + offset))
    return labelled[offset * step :: step][:count]


def tiny_gridwatch_dataset(root: Path, per_source: dict[str, tuple[int, int]]) -> Path:
    """A YOLO dataset in gridwatch classes: {source: (n_train, n_val)} real images each.

    Class mapping comes from the data helper's dataset definitions (datasets/*.yaml).
    """
    from training.sources import gridwatch_classes, load_source

    classes = list(gridwatch_classes())
    index = {c: i for i, c in enumerate(classes)}
    for name, (n_train, n_val) in per_source.items():
        source = load_source(name)
        src_names = yaml.safe_load((DATASETS / name / "data.yaml").read_text())["names"]
        picked = source_images(name, n_train + n_val)
        for i, image in enumerate(picked):
            split = "train" if i < n_train else "val"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            link = root / "images" / split / f"{name}__{image.name}"
            if not link.exists():
                link.symlink_to(image)
            lines = []
            for line in (DATASETS / name / "labels" / f"{image.stem}.txt").read_text().splitlines():
                parts = line.split()
                if not parts:
                    continue
                target = source.class_map.get(src_names[int(parts[0])])
                if target is not None:
                    lines.append(" ".join([str(index[target]), *parts[1:5]]))
            (root / "labels" / split / f"{name}__{image.stem}.txt").write_text("\n".join(lines) + "\n")
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(classes)),
        "sources": list(per_source),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return root / "data.yaml"


def bootstrapped_pt(target: Path, n_images: int = 16) -> Path:
    """The COCO YOLOv8n rebuilt from the shared int8 ONNX (training/bootstrap.py)."""
    import cv2

    from training.bootstrap import bootstrap

    images = [cv2.imread(str(p)) for p in source_images("garbage_overflow_cn", n_images)]
    return bootstrap(TEACHER, target, images)
