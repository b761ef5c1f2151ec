"""`gridwatch eval`'s inputs: a labelled folder in gridwatch classes, and the model's predictions on it.

numpy only (no torch, no Ultralytics) for ONNX: eval must run with the base install, on
the ONNX file exactly as `detector.Detector` serves it. A .pt model goes through
Ultralytics' own predict with the same settings. The arithmetic is in training.metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.detections import Detections
from detector.runtime import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, Detector
from training.metrics import AP_SCORE_THRESHOLD, EvalResult, LabelledImage, evaluate_predictions
from training.yolo_format import (
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


# ---------------------------------------------------------------- reading the folder


def class_mapping(source: str, names: Mapping[int, str], explicit: bool = True) -> dict[str, str | None]:
    """Source class name -> gridwatch class (None: dropped), from the dataset definition.

    A source named on purpose must exist. When the name merely defaults to the folder's
    and no definition has it, the folder is taken to be in gridwatch classes already
    (what `gridwatch dataset build` writes).
    """
    from training.sources import load_source

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


def load_eval_set(root: str | Path, source: str | None = None) -> EvalSet:
    root = Path(root)
    yaml_path = root / "data.yaml"
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
    return eval_set_from_images(_image_dir(data), data.names, mapping, root=root, source=source or root.name)


def _image_dir(data: DataYaml) -> Path:
    for split in ("val", "test", "train"):
        folder = data.split_dir(split)
        if folder is not None and folder.is_dir():
            return folder
    if (data.file.parent / "images").is_dir():
        return data.file.parent / "images"
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
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
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


def evaluate(predict: Predictor, eval_set: EvalSet, operating_threshold: float = DEFAULT_SCORE_THRESHOLD) -> EvalResult:
    def predictions() -> Iterable[Detections]:
        for image in eval_set.images:
            frame = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
            if frame is None:
                raise EvalError(f"{image.path}: unreadable image")
            yield predict(frame)

    return evaluate_predictions(eval_set.images, predictions(), operating_threshold)


def onnx_predictor(
    model_path: str | Path, threads: int | None = None, imgsz: int | None = None
) -> tuple[Predictor, dict[str, str]]:
    """The served runtime at AP's score threshold; returns it and the model's metadata.
    imgsz: another longest side for a dynamic-shape model (the Detector refuses it otherwise)."""
    detector = Detector(model_path, score_threshold=AP_SCORE_THRESHOLD, iou_threshold=DEFAULT_IOU_THRESHOLD,
                        max_detections=MAX_DETECTIONS, threads=threads, imgsz=imgsz)
    return detector, dict(detector.info.metadata)


def tiled_predictor(detector: Detector, tile: int | None = None) -> Predictor:
    """The same runtime, tiled at native resolution (what the static checks run)."""
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
