"""The dataset manifest: what `gridwatch dataset build` made, image by image, as `manifest.json`.

Training reads its label counts back for the model card (boxes per class, by where each
label came from); people read the rest to trace a file to its source.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SPLITS = ("train", "val")
LABEL_KINDS = ("human", "pseudo", "synthetic")

PerSplit = dict[str, dict[str, int]]  # split -> class -> boxes


class ManifestSource(BaseModel):
    name: str
    format: str
    licence: str
    attribution: str
    url: str | None


class BuildSettings(BaseModel):
    val_fraction: float
    pseudo_labels: bool
    pseudo_score: float | None  # None: no pseudo-labels
    teacher: str | None
    synthetic: int
    imgsz: int
    limit: int | None
    seed: int
    near_duplicate_distance: int
    crops: int = 0  # tile size of the native-resolution crops; 0: none
    max_crops: int = 0
    road_views: int = 0  # road-camera variants per truck/bus image (training/data/road_views.py)


class ImageCounts(BaseModel):
    real: int
    synthetic: int
    crops: int = 0  # native-resolution crops of real train images (training/data/crops.py)


class LabelCounts(BaseModel):
    """Boxes per split and class, by where the label came from. A kind the build did not
    count at all is empty."""

    human: PerSplit = {}
    pseudo: PerSplit = {}
    synthetic: PerSplit = {}
    images: dict[str, ImageCounts] = {}

    def by_kind(self) -> dict[str, PerSplit]:
        """The kinds the build counted."""
        return {kind: getattr(self, kind) for kind in LABEL_KINDS if getattr(self, kind)}


class RealImage(BaseModel):
    file: str  # "split/name" under images/
    source: str
    original: str
    split: str
    synthetic: Literal[False] = False
    sha256: str
    phash: str  # 16 hex digits
    cluster: int  # near-duplicate cluster: the split follows it
    boxes: int
    pseudo_labelled_classes: list[str]
    pseudo_boxes: int


class CropImage(BaseModel):
    """A tile of a real train image at its native resolution (training/data/crops.py)."""

    file: str
    source: str
    crop_of: str  # the "split/name" of the whole image it was cut from
    window: list[int]  # x0, y0, x1, y1 in the original image's pixels
    split: Literal["train"] = "train"
    synthetic: Literal[False] = False
    boxes: int
    pseudo_labelled_classes: list[str]
    pseudo_boxes: int


class SyntheticBox(BaseModel):
    model_config = ConfigDict(validate_by_name=True)

    kind: str = Field(alias="class")  # "flyer" | "banner"
    box: list[float]
    occluded: float


class SyntheticImage(BaseModel):
    file: str
    source: Literal["synthetic"] = "synthetic"
    background: str  # "source/name" of the real image it is drawn on
    split: str
    synthetic: Literal[True] = True
    boxes: int
    synthetic_boxes: list[SyntheticBox]
    pseudo_labelled_classes: list[str]
    pseudo_boxes: int


class DatasetManifest(BaseModel):
    classes: list[str]
    sources: list[ManifestSource]
    options: BuildSettings
    counts: LabelCounts
    dataset_hash: str
    images: list[RealImage | CropImage | SyntheticImage]


def per_split(counts: dict[str, Counter], classes: Sequence[str]) -> PerSplit:
    """{split: Counter of classes} -> {split: {class: n}} in class order, zeros left out."""
    return {s: {c: counts[s][c] for c in classes if counts[s][c]} for s in SPLITS}


def image_counts(images: Sequence[CropImage | RealImage | SyntheticImage]) -> dict[str, ImageCounts]:
    return {
        s: ImageCounts(real=sum(1 for m in images if m.split == s and isinstance(m, RealImage)),
                       synthetic=sum(1 for m in images if m.split == s and m.synthetic),
                       crops=sum(1 for m in images if m.split == s and isinstance(m, CropImage)))
        for s in SPLITS
    }


def write_manifest(manifest: DatasetManifest, path: Path) -> None:
    path.write_text(json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=1, ensure_ascii=False))


def read_label_counts(path: Path) -> LabelCounts:
    """The label counts of a built dataset's manifest.json."""
    return LabelCounts.model_validate(json.loads(path.read_text(encoding="utf-8")).get("counts", {}))


def read_sources(path: Path) -> list[ManifestSource]:
    """The sources a built dataset's manifest.json records, with their licence and attribution as
    they were at build time: a source given by file path has no name to look it up by later."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [ManifestSource.model_validate(s) for s in data.get("sources", [])]
