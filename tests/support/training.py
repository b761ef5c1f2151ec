"""Test-time datasets and models for the training tests: real images from ../shared, built into tmp dirs.

Nothing here is copied into the repository; images are linked from ../shared into a
pytest tmp folder and labels are rewritten there in gridwatch classes.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.shared_data import COCO_INT8, DATASETS
from training.export.export import ExportResult, export
from training.data.yolo_format import DataYaml, label_path, read_data_yaml, read_labels, write_data_yaml


def source_images(name: str, count: int, offset: int = 0) -> list[Path]:
    """`count` images of a source that have at least one label, spread over the folder."""
    folder = DATASETS / name / "images"
    labelled = [p for p in sorted(folder.iterdir()) if label_path(p, folder).stat().st_size > 0]
    step = max(1, len(labelled) // (count + offset))
    return labelled[offset * step :: step][:count]


def tiny_gridwatch_dataset(root: Path, per_source: dict[str, tuple[int, int]]) -> Path:
    """A YOLO dataset in gridwatch classes: {source: (n_train, n_val)} real images each.

    Class mapping comes from the data helper's dataset definitions (datasets/*.yaml).
    """
    from training.data.sources import gridwatch_classes, load_source

    classes = list(gridwatch_classes())
    index = {c: i for i, c in enumerate(classes)}
    for name, (n_train, n_val) in per_source.items():
        source = load_source(name)
        src_names = read_data_yaml(DATASETS / name / "data.yaml").names
        for i, image in enumerate(source_images(name, n_train + n_val)):
            split = "train" if i < n_train else "val"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            link = root / "images" / split / f"{name}__{image.name}"
            if not link.exists():
                link.symlink_to(image)
            lines = []
            for line in read_labels(label_path(image, DATASETS / name / "images")):
                target = source.class_map.get(src_names[line.class_id])
                if target is not None:
                    lines.append(" ".join(map(str, (index[target], *line.box))))
            label_path(link, root / "images").write_text("\n".join(lines) + "\n")
    write_data_yaml(DataYaml(
        file=root / "data.yaml", root=root, names=dict(enumerate(classes)),
        splits={"train": "images/train", "val": "images/val"}, sources=list(per_source),
    ))
    return root / "data.yaml"


def bootstrapped_pt(target: Path, n_images: int = 16) -> Path:
    """The COCO YOLOv8n rebuilt from the shared int8 ONNX (training/fit/bootstrap.py)."""
    import cv2

    from training.fit.bootstrap import bootstrap

    images = [cv2.imread(str(p)) for p in source_images("garbage_overflow_cn", n_images)]
    return bootstrap(COCO_INT8, target, images)


def export_coco(folder: Path, **options) -> ExportResult:
    """The bootstrapped COCO model as folder/coco.pt, exported at 640 px into folder/out."""
    return export(bootstrapped_pt(folder / "coco.pt"), folder / "out", imgsz=640, stem="coco", **options)
