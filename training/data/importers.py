"""Annotation importers: each labelling format into one in-memory `Sample` per image.

Boxes come out as float xyxy in the image's own pixels (continuous coordinates: a box
covering pixel columns 0..9 is x1=0, x2=10), labels as the source's own class names.
Mapping onto gridwatch classes happens later (training.data.sources); importers only read.

Anything odd found while reading (a malformed line, an unsupported shape) is recorded
in `Sample.problems`, never silently skipped, so the build report can count it.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from training.data.yolo_format import boxes_to_pixels, find_images, label_path, read_data_yaml, read_labels


class AnnotationError(ValueError):
    """An annotation file cannot be read at all; the message names the file."""


@dataclass
class Sample:
    image: Path
    boxes: np.ndarray  # (N, 4) float64 xyxy, pixels
    labels: list[str]  # source class names, one per box
    size: tuple[int, int] | None = None  # (width, height); None when unknown
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.image}: {len(self.boxes)} boxes but {len(self.labels)} labels")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as decoders show the image, i.e. after EXIF rotation, from the header."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# --- YOLO txt -------------------------------------------------------------------------


def read_yolo(
    root: Path, *, images: str = "images", labels: str = "labels", names: dict[int, str] | None = None
) -> list[Sample]:
    """An Ultralytics folder: images/X.jpg with labels/X.txt (`class cx cy w h`, 0..1).

    A missing label file means an image with no objects (Ultralytics' convention).
    """
    names = names if names is not None else _yolo_names(root)
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir():
        raise AnnotationError(f"{image_dir}: no images folder")
    samples = []
    for image in find_images(image_dir):
        label_file = label_path(image, image_dir, label_dir)
        sample = Sample(image=image, boxes=np.zeros((0, 4)), labels=[])
        rows = []
        for line in read_labels(label_file):
            if line.is_box and (line.box[2] <= 0 or line.box[3] <= 0):
                # `1 0.5 0.5 -0.2 0.3` is no box: turning it into one would invent an object.
                sample.problems.append(f"{label_file}:{line.number}: width or height not positive, refused {line.text!r}")
            elif line.is_box:
                rows.append((names.get(line.class_id, f"<class id {line.class_id}>"), line.box))
            else:
                sample.problems.append(f"{label_file.name}:{line.number}: malformed line {line.text!r}")
        try:
            sample.size = image_size(image)
        except Exception as exc:  # any decoder failure: the build reports the image
            if rows:
                sample.problems.append(f"{len(rows)} boxes not read: image size unknown ({exc})")
            samples.append(sample)
            continue
        sample.boxes = boxes_to_pixels([box for _, box in rows], sample.size)
        sample.labels = [name for name, _ in rows]
        samples.append(sample)
    return samples


def _yolo_names(root: Path) -> dict[int, str]:
    """Class names of a YOLO folder: data.yaml, else classes.txt (Label Studio's YOLO export) or
    obj.names (Darknet), one name a line in id order."""
    if (root / "data.yaml").is_file():
        return read_data_yaml(root / "data.yaml").names
    for listing in ("classes.txt", "obj.names"):
        if (root / listing).is_file():
            lines = [n.strip() for n in (root / listing).read_text(encoding="utf-8").splitlines() if n.strip()]
            return dict(enumerate(lines))
    raise AnnotationError(f"{root}: no data.yaml, classes.txt or obj.names to name the classes; add them to the "
                          "source definition as options.names: [name0, name1, ...] (in class id order)")


# --- COCO JSON ------------------------------------------------------------------------


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read JSON: {exc}") from exc


def _coco_image(file_name: str, images: Path, annotations: Path) -> Path:
    """Where a COCO `file_name` is. Tools disagree about what it is relative to: the images
    folder (the COCO convention), the annotation file's folder (Label Studio writes
    `images/<hash>-<name>.jpg` beside result.json), or the subset's folder (CVAT writes
    annotations/instances_<subset>.json with images under images/<subset>/)."""
    subset = annotations.stem.removeprefix("instances_")
    candidates = [images / file_name, annotations.parent / file_name, annotations.parent.parent / file_name,
                  images / subset / file_name, images / Path(file_name).name]
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_coco(annotations: Path, images: Path) -> list[Sample]:
    """COCO detection JSON: bbox = [x, y, w, h] in pixels; file_name relative to images/."""
    data = _load_json(annotations)
    try:
        categories = {c["id"]: c["name"] for c in data["categories"]}
        by_id = {
            im["id"]: Sample(
                image=_coco_image(str(im["file_name"]), images, annotations),
                boxes=np.zeros((0, 4)),
                labels=[],
                size=(int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None,
            )
            for im in data["images"]
        }
        rows: dict[int, list[tuple[str, list[float]]]] = {}
        for ann in data.get("annotations", []):
            sample = by_id.get(ann["image_id"])
            if sample is None:
                raise AnnotationError(f"{annotations}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
            if "bbox" not in ann:
                sample.problems.append(f"annotation {ann.get('id')}: no bbox (segmentation only), skipped")
                continue
            x, y, w, h = map(float, ann["bbox"])
            name = categories.get(ann["category_id"], f"<category id {ann['category_id']}>")
            rows.setdefault(ann["image_id"], []).append((name, [x, y, x + w, y + h]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{annotations}: not a COCO detection file ({exc!r})") from exc
    for image_id, sample in by_id.items():
        found = rows.get(image_id, [])
        sample.boxes = np.asarray([b for _, b in found], np.float64).reshape(-1, 4)
        sample.labels = [n for n, _ in found]
    return sorted(by_id.values(), key=lambda s: str(s.image))


# --- Pascal VOC XML -------------------------------------------------------------------


def _xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(f"{path}: cannot read XML: {exc}") from exc


def read_voc(annotations: Path, images: Path, *, one_based: bool = False) -> list[Sample]:
    """A folder of VOC XML files, one per image.

    The VOC devkit counts pixels from 1 with inclusive corners (one_based=True: the
    continuous box is [xmin-1, xmax]); LabelImg and CVAT write 0-based continuous
    coordinates, which is the default here. The source definition says which.
    """
    samples = []
    offset = 1.0 if one_based else 0.0
    for xml_file in sorted(annotations.glob("*.xml")):
        root = _xml(xml_file)
        filename = root.findtext("filename") or xml_file.with_suffix(".jpg").name
        size = root.find("size")
        wh = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            wh = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
        sample = Sample(image=images / filename, boxes=np.zeros((0, 4)), labels=[], size=wh)
        boxes = []
        for i, obj in enumerate(root.iter("object")):
            box = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                sample.problems.append(f"{xml_file.name}: object {i} has no valid bndbox, skipped")
                continue
            boxes.append([xmin - offset, ymin - offset, xmax, ymax])
            sample.labels.append((obj.findtext("name") or "").strip())
        sample.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        samples.append(sample)
    return samples


# --- Label Studio JSON export ---------------------------------------------------------

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def _label_studio_image(ref: str, images: Path) -> Path:
    """Label Studio stores '/data/upload/3/1a2b3c4d-name.jpg' or '/data/local-files/?d=dir/name.jpg'."""
    parsed = urlparse(ref)
    local = parse_qs(parsed.query).get("d")
    name = Path(unquote(local[0] if local else parsed.path)).name
    if not (images / name).exists():
        m = _UPLOAD_PREFIX.match(name)
        if m and (images / m.group(1)).exists():
            name = m.group(1)
    return images / name


def _rotated_extent(x: float, y: float, w: float, h: float, degrees: float) -> list[float]:
    """Axis-aligned box around a rectangle rotated about its top-left corner (Label Studio's rule)."""
    a = math.radians(degrees)
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    xs = [x + cx * math.cos(a) - cy * math.sin(a) for cx, cy in corners]
    ys = [y + cx * math.sin(a) + cy * math.cos(a) for cx, cy in corners]
    return [min(xs), min(ys), max(xs), max(ys)]


def read_label_studio(export: Path, images: Path, *, image_key: str = "image") -> list[Sample]:
    """Label Studio's JSON export: a list of tasks; rectanglelabels values are in percent.

    A task annotated by several people takes the first annotation not cancelled; the
    others are noted as problems so a reviewer knows there was disagreement to settle.
    """
    tasks = _load_json(export)
    if not isinstance(tasks, list):
        raise AnnotationError(f"{export}: expected a list of tasks (Label Studio 'JSON' export)")
    samples = []
    for t, task in enumerate(tasks):
        try:
            ref = task["data"][image_key]
        except (KeyError, TypeError):
            raise AnnotationError(f"{export}: task {t} has no data.{image_key}") from None
        sample = Sample(image=_label_studio_image(str(ref), images), boxes=np.zeros((0, 4)), labels=[])
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if len(annotations) > 1:
            sample.problems.append(f"task {task.get('id', t)}: {len(annotations)} annotations, used the first")
        boxes = []
        for result in annotations[0].get("result", []) if annotations else []:
            value = result.get("value", {})
            if result.get("type") != "rectanglelabels" or "rectanglelabels" not in value:
                sample.problems.append(f"task {task.get('id', t)}: result of type {result.get('type')!r} skipped")
                continue
            W, H = float(result["original_width"]), float(result["original_height"])
            sample.size = (int(W), int(H))
            x, y = value["x"] / 100 * W, value["y"] / 100 * H
            w, h = value["width"] / 100 * W, value["height"] / 100 * H
            for label in value["rectanglelabels"]:
                boxes.append(_rotated_extent(x, y, w, h, float(value.get("rotation", 0) or 0)))
                sample.labels.append(label)
        sample.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        samples.append(sample)
    return samples


# --- CVAT for images 1.1 XML ----------------------------------------------------------


def read_cvat(annotations: Path, images: Path) -> list[Sample]:
    """CVAT's 'CVAT for images 1.1' export: <image name width height><box label xtl ytl xbr ybr/>."""
    root = _xml(annotations)
    if root.tag != "annotations":
        raise AnnotationError(f"{annotations}: root element is <{root.tag}>, expected <annotations>")
    samples = []
    for image in root.iter("image"):
        sample = Sample(
            image=images / image.get("name", ""),
            boxes=np.zeros((0, 4)),
            labels=[],
            size=(int(image.get("width")), int(image.get("height"))) if image.get("width") else None,
        )
        boxes = []
        for child in image:
            if child.tag != "box":
                sample.problems.append(f"{image.get('name')}: <{child.tag}> shapes are not boxes, skipped")
                continue
            xtl, ytl, xbr, ybr = (float(child.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
            rotation = float(child.get("rotation", 0) or 0)
            if rotation:
                # CVAT rotates about the box centre.
                cx, cy, w, h = (xtl + xbr) / 2, (ytl + ybr) / 2, xbr - xtl, ybr - ytl
                a = math.radians(rotation)
                ew = abs(w * math.cos(a)) + abs(h * math.sin(a))
                eh = abs(w * math.sin(a)) + abs(h * math.cos(a))
                xtl, ytl, xbr, ybr = cx - ew / 2, cy - eh / 2, cx + ew / 2, cy + eh / 2
            boxes.append([xtl, ytl, xbr, ybr])
            sample.labels.append(child.get("label", ""))
        sample.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        samples.append(sample)
    return sorted(samples, key=lambda s: str(s.image))


READERS: dict[str, Callable[..., list[Sample]]] = {
    "yolo": read_yolo,
    "coco": read_coco,
    "voc": read_voc,
    "labelstudio": read_label_studio,
    "cvat": read_cvat,
}
