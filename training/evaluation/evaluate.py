"""`gridwatch eval`'s inputs: a labelled folder in gridwatch classes, and the model's predictions on it.

numpy only (no torch, no Ultralytics) for ONNX: eval must run with the base install, on
the ONNX file exactly as `detector.Detector` serves it. A .pt model goes through
Ultralytics' own predict with the same settings. The arithmetic is in training.evaluation.metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.detections import Detections
from detector.runtime import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, Detector
from training.evaluation.metrics import AP_SCORE_THRESHOLD, EvalResult, LabelledImage, evaluate_predictions
from training.data.yolo_format import (
    DataYaml,
    YoloFormatError,
    boxes_to_pixels,
    find_images,
    label_path,
    read_data_yaml,
    read_labels,
)

MAX_DETECTIONS = 300  # per image, as Ultralytics' val

Predictor = Callable[[np.ndarray], Detections]


class EvalError(ValueError):
    """The evaluation folder or its labels are malformed; the message names the file."""


@dataclass(frozen=True)
class EvalSet:
    root: Path
    source: str
    images: list[LabelledImage]
    dropped_labels: int  # boxes of source classes the mapping drops
    split: str = ""  # which split of the folder was scored (val, test, train, or "images/": no splits)


# ---------------------------------------------------------------- reading the folder


def class_mapping(source: str, names: Mapping[int, str], explicit: bool = True) -> dict[str, str | None]:
    """Source class name -> gridwatch class (None: dropped), from the dataset definition.

    A source named on purpose must exist. When the name merely defaults to the folder's
    and no definition has it, the folder is taken to be in gridwatch classes already
    (what `gridwatch dataset build` writes).
    """
    from training.data.sources import load_source

    try:
        definition = load_source(source)
    except ValueError as exc:
        if explicit:
            raise EvalError(str(exc)) from None
        return {n: n for n in names.values()}
    mapping = dict(definition.class_map)
    unknown = [n for n in names.values() if n not in mapping]
    if unknown:
        raise EvalError(f"dataset definition {source!r} does not say how to map classes {unknown}")
    return mapping


def load_eval_set(root: str | Path, source: str | None = None, split: str | None = None) -> EvalSet:
    """The folder's `split` (default: val, else test, else train, else images/), named in the result."""
    root = Path(root)
    yaml_path = root / "data.yaml"
    if root.is_file() and root.suffix in (".yaml", ".yml") and _is_source_definition(root):
        return source_eval_set(root, split)
    if root.is_file() and root.suffix in (".yaml", ".yml"):  # DIR/data.yaml works as well as DIR
        yaml_path, root = root, root.parent
    elif not root.is_dir():
        raise EvalError(f"{root}: not a folder")
    if not yaml_path.is_file():
        raise EvalError(f"{root}: no data.yaml (expected images/, labels/ and data.yaml)")
    try:
        data = read_data_yaml(yaml_path)
    except YoloFormatError as exc:
        raise EvalError(str(exc)) from None
    mapping = class_mapping(source or root.name, data.names, explicit=source is not None)
    scored, folder = _image_dir(data, split)
    found = eval_set_from_images(folder, data.names, mapping, root=root, source=source or root.name)
    return dataclasses.replace(found, split=scored)


def _is_source_definition(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"format", "classes"} <= set(data) and "names" not in data


def source_eval_set(definition: Path, split: str | None = None) -> EvalSet:
    """Every image of a source definition (`gridwatch dataset import`'s DEF.yaml), in its own
    format, with its boxes mapped to gridwatch classes: a source has no splits."""
    from training.data.importers import AnnotationError
    from training.data.sources import load_source

    if split is not None:
        raise EvalError(f"{definition}: a source definition has no '{split}' split (build it to get one)")
    try:
        source = load_source(str(definition))
        samples = source.samples()
    except (ValueError, AnnotationError, OSError) as exc:
        raise EvalError(str(exc)) from None
    images = [LabelledImage(path=s.image, boxes=s.boxes.astype(np.float32), classes=list(s.classes))
              for s in samples if s.image.is_file()]
    if not images:
        raise EvalError(f"{definition}: none of the source's {len(samples)} images is there")
    return EvalSet(root=source.path, source=source.name, images=images,
                   dropped_labels=sum(s.dropped + len(s.unknown) for s in samples),
                   split=f"all images of source {source.name}")


def _image_dir(data: DataYaml, split: str | None = None) -> tuple[str, Path]:
    if split is not None:
        folder = data.split_dir(split)
        if folder is None:
            raise EvalError(f"{data.file}: no '{split}' split (it has {', '.join(data.splits) or 'none'})")
        if not folder.is_dir():
            raise EvalError(f"{data.file}: the {split} folder {folder} does not exist")
        return split, folder
    for name in ("val", "test", "train"):
        folder = data.split_dir(name)
        if folder is not None and folder.is_dir():
            return name, folder
    if (data.file.parent / "images").is_dir():
        return "images/", data.file.parent / "images"
    raise EvalError(f"{data.file.parent}: no image folder (data.yaml val/train, or images/)")


def eval_set_from_images(
    image_dir: Path, names: Mapping[int, str], mapping: Mapping[str, str | None], *, root: Path, source: str
) -> EvalSet:
    """Every image under `image_dir` with its YOLO labels mapped to gridwatch classes."""
    paths = find_images(image_dir)
    if not paths:
        raise EvalError(f"{image_dir}: no images")
    images, dropped = [], 0
    for path in paths:
        boxes, classes, n_dropped = _read_labels(label_path(path, image_dir), _image_size(path), names, mapping)
        dropped += n_dropped
        images.append(LabelledImage(path=path, boxes=boxes, classes=classes))
    return EvalSet(root=root, source=source, images=images, dropped_labels=dropped)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # past OpenCV's pixel limit
        raise EvalError(f"{path}: too large to decode (OpenCV's pixel limit)") from None
    if image is None:
        raise EvalError(f"{path}: unreadable image")
    return image.shape[1], image.shape[0]


def _read_labels(
    path: Path, size: tuple[int, int], names: Mapping[int, str], mapping: Mapping[str, str | None]
) -> tuple[np.ndarray, list[str], int]:
    boxes, classes, dropped = [], [], 0
    for line in read_labels(path):
        if line.box is None:
            raise EvalError(f"{path}:{line.number}: expected 'class cx cy w h', got {line.text!r}")
        if line.class_id not in names:
            raise EvalError(f"{path}:{line.number}: class id {line.class_id} is not in data.yaml names")
        target = mapping.get(names[line.class_id])
        if target is None:
            dropped += 1
            continue
        boxes.append(line.box)
        classes.append(target)
    return boxes_to_pixels(boxes, size).astype(np.float32), classes, dropped


# ---------------------------------------------------------------- predicting


def evaluate(predict: Predictor, eval_set: EvalSet, operating_threshold: float = DEFAULT_SCORE_THRESHOLD,
             originals: Mapping[Path, Path] | None = None) -> EvalResult:
    """`originals`: image -> a larger file of the same picture to predict on instead (see
    `source_originals`); its boxes are scaled back onto the image's labels."""
    originals = originals or {}

    def predictions() -> Iterable[Detections]:
        for image in eval_set.images:
            original = originals.get(image.path)
            frame = read_frame(original or image.path)
            found = predict(frame)
            if original is not None:
                w, h = _image_size(image.path)
                found = found.scaled(w / frame.shape[1], h / frame.shape[0])
            yield found

    return evaluate_predictions(eval_set.images, predictions(), operating_threshold)


def read_frame(path: Path) -> np.ndarray:
    """An image as the runtime sees it (BGR), or EvalError naming the file."""
    try:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        raise EvalError(f"{path}: too large to decode (OpenCV's pixel limit)") from None
    if frame is None:
        raise EvalError(f"{path}: unreadable image")
    return frame


@dataclass(frozen=True)
class SourceOriginals:
    """The source files behind a build's smaller copies (`gridwatch dataset build` stores real
    images at no more than its imgsz, 640 px): tiling those, not the copies, is what a camera's
    full-resolution frame gives the static checks."""

    files: dict[Path, Path]  # eval image -> its source file, larger than the copy
    unavailable: int = 0  # copies whose source file is gone or no longer the one built from

    def line(self, images: int) -> str:
        out = f"{len(self.files)} of {images} images read from their larger source file"
        copies = "copy" if self.unavailable == 1 else "copies"
        return out + (f", {self.unavailable} {copies} whose source is gone or changed read as built"
                      if self.unavailable else "")


def source_originals(eval_set: EvalSet) -> SourceOriginals:
    """Each image of a build's split whose manifest names a source file with the same content
    it was built from (sha256) and a larger, same-shaped picture; none for any other folder."""
    import hashlib

    from pydantic import ValidationError

    from training.data.dataset_manifest import DatasetManifest, RealImage
    from training.data.importers import image_size

    manifest = eval_set.root / "manifest.json"
    if not manifest.is_file():
        return SourceOriginals({})
    try:
        built = DatasetManifest.model_validate_json(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return SourceOriginals({})
    by_file = {(eval_set.root / "images" / m.file).resolve(): m for m in built.images if isinstance(m, RealImage)}
    files, unavailable = {}, 0
    for image in eval_set.images:
        entry = by_file.get(Path(image.path).resolve())
        if entry is None:
            continue
        original = Path(entry.original)
        try:
            (sw, sh), (cw, ch) = image_size(original), image_size(image.path)
            larger = sw > cw and abs(sw / sh - cw / ch) < 0.01
            same = hashlib.sha256(original.read_bytes()).hexdigest() == entry.sha256
        except OSError:
            unavailable += 1
            continue
        if not same:
            unavailable += 1
        elif larger:
            files[image.path] = original
    return SourceOriginals(files, unavailable)


def onnx_predictor(
    model_path: str | Path, threads: int | None = None, imgsz: int | None = None
) -> tuple[Predictor, dict[str, str]]:
    """The served runtime at AP's score threshold; returns it and the model's metadata.
    imgsz: another longest side for a dynamic-shape model (the Detector refuses it otherwise)."""
    detector = Detector(model_path, score_threshold=AP_SCORE_THRESHOLD, iou_threshold=DEFAULT_IOU_THRESHOLD,
                        max_detections=MAX_DETECTIONS, threads=threads, imgsz=imgsz)
    return detector, dict(detector.info.metadata)


def tiled_predictor(detector: Detector, tile: int | None = None) -> Predictor:
    """The same runtime, tiled over the frame's pyramid (detector.tiling: what the static checks run)."""
    return lambda frame: detector.detect_tiled(frame, tile=tile)


def ultralytics_predictor(weights: str | Path, imgsz: int) -> Predictor:
    """A .pt model behind the same Predictor signature as the served ONNX runtime."""
    from training.offline import ultralytics_offline

    YOLO = ultralytics_offline()
    model = YOLO(str(weights))
    names = {int(k): v for k, v in model.names.items()}

    def predict(frame: np.ndarray) -> Detections:
        r = model.predict(frame, imgsz=imgsz, conf=AP_SCORE_THRESHOLD, iou=DEFAULT_IOU_THRESHOLD,
                          max_det=MAX_DETECTIONS, verbose=False)[0]
        b = r.boxes
        return Detections(
            xyxy=b.xyxy.cpu().numpy().astype(np.float32),
            scores=b.conf.cpu().numpy().astype(np.float32),
            class_ids=b.cls.cpu().numpy().astype(np.int64),
            names=names,
        )

    return predict


def operating_threshold_of(metadata: Mapping[str, str]) -> float:
    """The score the model is served at: its card's threshold if the export recorded one."""
    try:
        return float(metadata.get("gridwatch_score_threshold", DEFAULT_SCORE_THRESHOLD))
    except ValueError:
        return DEFAULT_SCORE_THRESHOLD


# ---------------------------------------------------------------- held out by place


@dataclass(frozen=True)
class PlaceFolds:
    """Per-class AP on K folds of whole places (training/data/places.py): one building or street is
    in one fold only, so the spread across folds is how much the figure depends on the place.

    For a build split by image, places are found over train and val together: the val images
    whose place also holds a train image (`seen_place_images`) are left out of the folds, and
    `held_out` is the model on the rest, the val images of places it never trained on."""

    k: int
    groups: int
    folds: list[EvalResult]
    grouping: list[str]  # how each source was grouped (SourcePlaces.line)
    held_out: EvalResult | None = None  # image splits only
    seen_place_images: int = 0
    tiled: TiledHeldOut | None = None  # the served file tiled on the same held-out images

    def per_class(self) -> dict[str, dict[str, float | int]]:
        """class -> mean, min and max AP50 over the folds that hold the class, and how many do."""
        out: dict[str, dict[str, float | int]] = {}
        names = sorted({c for f in self.folds for c, m in f.classes.items() if m.instances})
        for name in names:
            aps = [f.classes[name].ap50 for f in self.folds if name in f.classes and f.classes[name].instances]
            out[name] = {"mean_ap50": float(np.mean(aps)), "min_ap50": float(min(aps)), "max_ap50": float(max(aps)),
                         "folds": len(aps)}
        return out

    def to_dict(self) -> dict:
        out = {"k": self.k, "groups": self.groups, "grouping": self.grouping, "classes": self.per_class()}
        if self.held_out is not None:
            out["split"] = "image"
            out["held_out"] = {"images": self.held_out.images, "seen_place_images": self.seen_place_images,
                               "map50": self.held_out.map50, "classes": _ap50_per_class(self.held_out)}
        if self.tiled is not None:
            out["tiled"] = {"model": self.tiled.model, "images": self.tiled.result.images,
                            "source_files": self.tiled.source_files, "classes": _ap50_per_class(self.tiled.result)}
        return out

    def table(self, whole: EvalResult | None = None) -> str:
        held, tiled = self.held_out, self.tiled.result if self.tiled is not None else None
        lines = [f"{'class':<16}{'AP50 all':>9}" + (f"{'held out':>9}" if held else "") +
                 (f"{'tiled':>9}" if tiled else "") + f"{'mean':>8}{'min':>8}{'max':>8}{'folds':>7}"]
        for name, s in self.per_class().items():
            overall = f"{whole.classes[name].ap50:>9.3f}" if whole is not None and name in whole.classes else f"{'':>9}"
            for other in (held, tiled):
                if other:
                    overall += f"{other.classes[name].ap50:>9.3f}" if name in other.classes else f"{'':>9}"
            lines.append(f"{name:<16}{overall}{s['mean_ap50']:>8.3f}{s['min_ap50']:>8.3f}{s['max_ap50']:>8.3f}"
                         f"{s['folds']:>7}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TiledHeldOut:
    """The served file tiled at the source's resolution (what the static checks run on a camera's
    full frame) on the images held out by place: the figure a tiled goal (window_ad) is judged on."""

    model: str
    result: EvalResult
    source_files: int  # images read from their larger source file (SourceOriginals)


def _ap50_per_class(result: EvalResult) -> dict[str, dict[str, float | int]]:
    return {c: {"instances": m.instances, "ap50": m.ap50} for c, m in result.classes.items() if m.instances}


def tiled_held_out(model: Path, eval_set: EvalSet, seen: Set[Path] | None = None) -> TiledHeldOut:
    """`model` tiled on the images of `eval_set` not in `seen` (an image split's val images whose
    place holds a train image)."""
    held = dataclasses.replace(eval_set, images=[im for im in eval_set.images if not seen or im.path not in seen])
    detector, _ = onnx_predictor(model)
    originals = source_originals(held)
    return TiledHeldOut(model=Path(model).name, result=evaluate(tiled_predictor(detector), held,
                                                                originals=originals.files),
                        source_files=len(originals.files))


def place_folds_of(groups: Mapping[Path, str], k: int) -> dict[Path, int]:
    """image -> fold: whole places dealt largest first to the fold with the fewest images,
    ties by place name, so the folds are balanced and the same on every run."""
    if k < 2:
        raise EvalError(f"place folds: k must be 2 or more, got {k}")
    sizes: dict[str, int] = {}
    for place in groups.values():
        sizes[place] = sizes.get(place, 0) + 1
    if len(sizes) < k:
        raise EvalError(f"place folds: {len(sizes)} places cannot fill {k} folds (use fewer folds)")
    load = [0] * k
    fold_of: dict[str, int] = {}
    for place in sorted(sizes, key=lambda p: (-sizes[p], p)):
        f = min(range(k), key=lambda i: (load[i], i))
        fold_of[place] = f
        load[f] += sizes[place]
    return {path: fold_of[place] for path, place in groups.items()}


def _hash_places(paths: Sequence[Path], default_source: str, root: Path) -> tuple[dict[Path, str], list[str]]:
    """Each image's place: `root`'s places.json where it has one, else perceptual-hash clusters per
    source (a built dataset's images are named `source__file`)."""
    import imagehash
    from PIL import Image

    from training.data.places import PlacedImage, place_groups

    placed = []
    for path in paths:
        source = path.name.split("__", 1)[0] if "__" in path.name else default_source
        with Image.open(path) as pil:
            placed.append(PlacedImage(source, path, int(str(imagehash.phash(pil.convert("RGB"))), 16)))
    try:
        groups, report = place_groups(placed, {s: root for s in {p.source for p in placed}})
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    return groups, [r.line() for r in report]


def eval_set_places(eval_set: EvalSet) -> tuple[dict[Path, str], list[str]]:
    """Each eval image's place: the folder's places.json where it has one, else perceptual-hash
    clusters per source."""
    return _hash_places([im.path for im in eval_set.images], eval_set.source, eval_set.root)


def image_split_places(eval_set: EvalSet, dataset_dir: Path) -> tuple[dict[Path, str], set[Path], list[str]] | None:
    """For a build split by image (train images beside, no places.json): each eval image's place,
    found over the train images and the eval images together, the eval images whose place also
    holds a train image, and how the places were found. None for any other folder."""
    from training.data.places import PLACES_FILE

    train_dir = dataset_dir / "images" / "train"
    if not train_dir.is_dir() or (dataset_dir / PLACES_FILE).is_file() or eval_set.split == "train":
        return None
    train = [p for p in find_images(train_dir) if "synthetic" not in p.name.lower()]
    groups, grouping = _hash_places([*train, *(im.path for im in eval_set.images)], eval_set.source, eval_set.root)
    trained = {groups[p] for p in train}
    val = {im.path: groups[im.path] for im in eval_set.images}
    return val, {path for path, place in val.items() if place in trained}, grouping


def evaluate_place_folds(predict: Predictor, eval_set: EvalSet, k: int,
                         operating_threshold: float = DEFAULT_SCORE_THRESHOLD,
                         places: Mapping[Path, str] | None = None,
                         grouping: Sequence[str] = ("places given",),
                         seen: Set[Path] | None = None) -> tuple[EvalResult, PlaceFolds]:
    """The whole set's result and its K place folds, from one prediction per image. `places`
    (image -> place) and `grouping` (how they were found, for the report): given, else found here.
    `seen` (an image split's val images whose place holds a train image): left out of the folds,
    and the rest is scored as the held-out set too."""
    groups, grouping = (dict(places), list(grouping)) if places is not None else eval_set_places(eval_set)
    predictions = []
    for image in eval_set.images:
        predictions.append(predict(read_frame(image.path)))
    whole = evaluate_predictions(eval_set.images, predictions, operating_threshold)
    kept = [(im, p) for im, p in zip(eval_set.images, predictions) if seen is None or im.path not in seen]
    folds = place_folds_of({im.path: groups[im.path] for im, _ in kept}, k)
    results = []
    for f in range(k):
        picked = [(im, p) for im, p in kept if folds[im.path] == f]
        results.append(evaluate_predictions([im for im, _ in picked], [p for _, p in picked], operating_threshold))
    held_out = None if seen is None else evaluate_predictions([im for im, _ in kept], [p for _, p in kept],
                                                              operating_threshold)
    return whole, PlaceFolds(k=k, groups=len({groups[im.path] for im, _ in kept}), folds=results, grouping=grouping,
                             held_out=held_out, seen_place_images=len(eval_set.images) - len(kept))
