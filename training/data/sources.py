"""Data sources: one YAML file per source in datasets/, read into gridwatch's classes.

A source file says where the data is (relative to the datasets root, ../shared/datasets
by default), its annotation format, licence and attribution, and how each of its class
names maps onto a gridwatch detector class (null = drop on purpose). A class the map
does not mention is *unknown*: the build reports it rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detector import load_taxonomy
from detector.files import REPO_ROOT, SHARED_DIR
from training.data.importers import READERS, Sample

DEFINITIONS_DIR = REPO_ROOT / "datasets"
DEFAULT_ROOT = SHARED_DIR / "datasets"
FORMATS = tuple(READERS)


class SourceError(ValueError):
    """A source definition is malformed or names a class gridwatch does not know."""


@cache
def gridwatch_classes() -> tuple[str, ...]:
    """The detector classes in id order, as the taxonomy lists them."""
    return tuple(load_taxonomy().all_detector_classes)


@dataclass
class LabelledImage:
    """One image of a source with its boxes already in gridwatch classes."""

    source: str
    image: Path
    boxes: np.ndarray  # (N, 4) float64 xyxy pixels
    classes: list[str]  # gridwatch class names
    size: tuple[int, int] | None  # (width, height) from the annotation or the image header
    unknown: list[str] = field(default_factory=list)  # source labels the map does not know (not in boxes)
    dropped: int = 0  # boxes of classes mapped to null on purpose
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    name: str
    path: Path  # resolved folder (or file's folder) of the data
    format: str
    licence: str
    attribution: str
    class_map: dict[str, str | None]
    url: str | None = None
    notes: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # format options: images, labels, annotations, ...
    definition: Path | None = None

    def read(self) -> list[Sample]:
        """The raw samples in the source's own class names."""
        opts = dict(self.options)
        if self.format == "yolo":
            names = opts.pop("names", None)
            if isinstance(names, list):
                names = dict(enumerate(names))
            return READERS["yolo"](self.path, names=names, **opts)
        images = self.path / opts.pop("images", "images")
        annotations = opts.pop("annotations")
        # A list: one file per subset (CVAT COCO writes annotations/instances_<subset>.json).
        files = annotations if isinstance(annotations, list) else [annotations]
        return [s for f in files for s in READERS[self.format](self.path / str(f), images, **opts)]

    def map(self, sample: Sample) -> LabelledImage:
        keep, classes, unknown, dropped = [], [], [], 0
        for i, label in enumerate(sample.labels):
            if label not in self.class_map:
                unknown.append(label)
            elif self.class_map[label] is None:
                dropped += 1
            else:
                keep.append(i)
                classes.append(self.class_map[label])
        return LabelledImage(
            source=self.name,
            image=sample.image,
            boxes=sample.boxes[keep],
            classes=classes,
            size=sample.size,
            unknown=unknown,
            dropped=dropped,
            problems=list(sample.problems),
        )

    def samples(self) -> list[LabelledImage]:
        """Every image with its boxes in gridwatch classes (pixels); unknown labels listed, not kept."""
        return [self.map(s) for s in self.read()]


def _parse(data: dict[str, Any], definition: Path | None, root: Path) -> Source:
    where = str(definition or data.get("name", "<source>"))
    required = ("name", "path", "format", "licence", "attribution", "classes")
    missing = [k for k in required if k not in data]
    if missing:
        raise SourceError(f"{where}: missing {', '.join(missing)}")
    if data["format"] not in FORMATS:
        raise SourceError(f"{where}: format {data['format']!r} is not one of {', '.join(FORMATS)}")
    class_map = data["classes"]
    if not isinstance(class_map, dict) or not class_map:
        raise SourceError(f"{where}: 'classes' must map source class names to gridwatch classes or null")
    known = set(gridwatch_classes())
    bad = {k: v for k, v in class_map.items() if v is not None and v not in known}
    if bad:
        raise SourceError(f"{where}: unknown gridwatch classes {bad}; known: {sorted(known)}")
    options = dict(data.get("options") or {})
    if data["format"] != "yolo" and "annotations" not in options:
        raise SourceError(f"{where}: format {data['format']} needs options.annotations (file or folder)")
    return Source(
        name=str(data["name"]),
        path=(root / str(data["path"])).resolve(),
        format=data["format"],
        licence=str(data["licence"]),
        attribution=" ".join(str(data["attribution"]).split()),
        class_map={str(k): v for k, v in class_map.items()},
        url=data.get("url"),
        notes=data.get("notes"),
        options=options,
        definition=definition,
    )


def source_from_file(definition: Path, root: Path | None = None) -> Source:
    try:
        data = yaml.safe_load(Path(definition).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceError(f"{definition}: cannot read source definition: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{definition}: expected a mapping")
    return _parse(data, Path(definition), Path(root) if root else DEFAULT_ROOT)


def load_source(name: str, root: Path | str | None = None, definitions: Path | None = None) -> Source:
    """A source by name (datasets/NAME.yaml) or by the path of a definition file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return source_from_file(candidate, root)
    definition = (definitions or DEFINITIONS_DIR) / f"{name}.yaml"
    if not definition.is_file():
        known = ", ".join(s.stem for s in sorted((definitions or DEFINITIONS_DIR).glob("*.yaml")))
        raise SourceError(f"no source named {name!r}; known: {known}")
    return source_from_file(definition, root)


def all_sources(root: Path | str | None = None, definitions: Path | None = None) -> list[Source]:
    return [source_from_file(p, root) for p in sorted((definitions or DEFINITIONS_DIR).glob("*.yaml"))]
