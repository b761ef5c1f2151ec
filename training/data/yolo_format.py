"""The Ultralytics YOLO dataset format, read and written in one place.

    DIR/data.yaml            names, and the train/val/test image folders relative to `path`
    DIR/images/SPLIT/X.jpg   an image
    DIR/labels/SPLIT/X.txt   its boxes, one `class cx cy w h` line each, as fractions of the image

A missing label file is an image with no objects (Ultralytics' convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from detector.files import is_image

class YoloFormatError(ValueError):
    """A data.yaml cannot be read; the message names the file."""


@dataclass(frozen=True)
class DataYaml:
    """What a data.yaml says. `sources` and `dataset_hash` are what `gridwatch dataset build`
    adds for train, export and the model card; Ultralytics ignores them."""

    file: Path
    root: Path  # the folder the split folders are relative to (data.yaml's `path`)
    names: dict[int, str]
    splits: dict[str, str] = field(default_factory=dict)  # "train" | "val" | "test" -> folder under root
    sources: list[str] = field(default_factory=list)
    dataset_hash: str | None = None

    def split_dir(self, split: str) -> Path | None:
        return self.root / self.splits[split] if split in self.splits else None


def read_data_yaml(path: Path) -> DataYaml:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise YoloFormatError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise YoloFormatError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise YoloFormatError(f"{path}: expected a mapping")
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise YoloFormatError(f"{path}: 'names' must map class ids to names")
    sources = data.get("sources") or []
    return DataYaml(
        file=path,
        root=path.parent / str(data.get("path") or "."),
        names={int(k): str(v) for k, v in names.items()},
        splits={s: str(data[s]) for s in ("train", "val", "test") if s in data},
        sources=[str(s) for s in sources],  # a mapping lists its keys
        dataset_hash=data["dataset_hash"] if isinstance(data.get("dataset_hash"), str) else None,
    )


def write_data_yaml(data: DataYaml, *, portable: bool = False) -> None:
    """`path` is written as given: a build writes the folder the dataset will end up in.
    `portable` leaves it out instead, so the folder can move: Ultralytics and `read_data_yaml`
    then take the yaml's own folder as the root."""
    content = {**({} if portable else {"path": str(data.root)}), **data.splits, "names": data.names}
    if data.sources:
        content["sources"] = data.sources
    if data.dataset_hash:
        content["dataset_hash"] = data.dataset_hash
    data.file.write_text(yaml.safe_dump(content, allow_unicode=True, sort_keys=False), encoding="utf-8")


def find_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, at any depth, in name order."""
    return sorted(p for p in Path(folder).rglob("*") if is_image(p))


def label_path(image: Path, image_dir: Path, label_dir: Path | None = None) -> Path:
    """The label file of `image`, found under `image_dir`: the same place under `label_dir`,
    suffix .txt. By default `label_dir` follows Ultralytics: `image_dir` with its last
    `images` folder named `labels` instead (the images' own folder when it has none)."""
    if label_dir is None:
        parts = list(Path(image_dir).parts)
        for i in range(len(parts) - 1, -1, -1):
            if parts[i] == "images":
                parts[i] = "labels"
                break
        label_dir = Path(*parts)
    return label_dir / Path(image).relative_to(image_dir).with_suffix(".txt")


@dataclass(frozen=True)
class LabelLine:
    """One non-blank line of a label file."""

    number: int  # from 1, for messages
    text: str
    class_id: int | None = None  # None: the line does not start with `class cx cy w h`
    box: tuple[float, float, float, float] | None = None  # cx, cy, w, h as fractions of the image

    @property
    def is_box(self) -> bool:
        """Exactly `class cx cy w h`. A longer line is a polygon (Roboflow exports some), whose
        first four numbers are points, not a box."""
        return self.box is not None and len(self.text.split()) == 5


def read_labels(path: Path) -> list[LabelLine]:
    """The lines of a label file; none when the file does not exist (an image with no objects)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.strip()
        if not text:
            continue
        lines.append(LabelLine(number, text, *_class_and_box(text.split())))
    return lines


def _class_and_box(fields: list[str]) -> tuple[int, tuple[float, float, float, float]] | tuple[None, None]:
    if len(fields) < 5:
        return None, None
    try:
        return int(fields[0]), (float(fields[1]), float(fields[2]), float(fields[3]), float(fields[4]))
    except ValueError:
        return None, None


def boxes_to_pixels(boxes: Sequence[tuple[float, float, float, float]], size: tuple[int, int]) -> np.ndarray:
    """(N, 4) float64 xyxy pixels of a w x h image, from YOLO cx cy w h fractions."""
    w, h = size
    xyxy = [[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h] for cx, cy, bw, bh in boxes]
    return np.asarray(xyxy, np.float64).reshape(-1, 4)


def label_text(boxes: np.ndarray, class_ids: Sequence[int], size: tuple[int, int]) -> str:
    """The label file for xyxy pixel boxes of a w x h image."""
    w, h = size
    return "".join(
        f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        for (x1, y1, x2, y2), c in zip(boxes, class_ids)
    )
