"""Second stage: an ONNX image classifier run on the crops of one detector class.

The detector finds a truck; whether its cargo bed is open, under a mesh or a tarp, or cannot
be told is a question about the crop, asked only of truck boxes (issue #28, item 4: the load
decision behind `muck_truck_uncovered`). The same mechanism serves any per-violation filter
learnt from reviews.

The file is any ONNX classifier taking (N, 3, H, W) float RGB in 0..1 and giving (N, K) logits
or probabilities, with its labels in the metadata `gridwatch_labels` (a JSON list, K long) and
the detector class it judges in `gridwatch_stage_class` (e.g. "truck").
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np

from detector.model import ModelLoadError

LOAD_DECISION = "load_decision"  # the stage muck_truck_uncovered names in the taxonomy
LOAD_LABELS = ("open", "mesh", "tarp", "cannot_tell")
OPEN, UNSURE = "open", "cannot_tell"
# A reviewer's "not a violation here" on a truck case says the load is covered, not how: a
# classifier trained from reviews alone knows `open` and `covered`.
COVERED = "covered"
CROP_MARGIN = 0.05  # of the box's size on each side: the tarp's edge lies on the box's border


def crop_batch(frame: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) float RGB in 0..1: each box (xyxy, the frame's pixels) with its margin, resized.
    Training (training/second_stage) crops with this same function, so train and serve agree."""
    h, w = hw
    batch = np.empty((len(boxes), 3, h, w), np.float32)
    H, W = frame.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float32)):
        mx, my = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
        xa, ya = min(max(0, int(x1 - mx)), W - 1), min(max(0, int(y1 - my)), H - 1)
        xb, yb = min(W, int(np.ceil(x2 + mx))), min(H, int(np.ceil(y2 + my)))
        crop = frame[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]
        rgb = cv2.cvtColor(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        batch[i] = rgb.transpose(2, 0, 1) / 255.0
    return batch


@dataclass(frozen=True)
class CropLabel:
    label: str
    score: float


class CropClassifier:
    """One ONNX classifier over detection crops; names its labels and the class it judges."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
            raise ModelLoadError(f"{path}: not a loadable ONNX classifier: {exc}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            labels = json.loads(meta["gridwatch_labels"])
            self.stage_class = meta["gridwatch_stage_class"]
            self.stage = meta.get("gridwatch_stage", LOAD_DECISION)
        except (KeyError, ValueError):
            raise ModelLoadError(f"{path}: a second-stage classifier needs metadata gridwatch_labels (a JSON list) "
                                 "and gridwatch_stage_class (the detector class it judges)") from None
        # Names as events carry them (`stage_label`): lower case, digits and underscores.
        if not isinstance(labels, list) or not labels or not all(
                isinstance(x, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,31}", x) for x in labels):
            raise ModelLoadError(f"{path}: gridwatch_labels must be a non-empty JSON list of names "
                                 "like 'open' or 'cannot_tell' (lower case, digits, _)")
        self.labels = tuple(labels)
        self.version = meta.get("gridwatch_model_version", os.path.basename(str(path)))
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise ModelLoadError(f"{path}: expected an (N, 3, H, W) input with fixed H and W, got {shape}")
        self.input_name = inp.name
        self.hw = (int(shape[2]), int(shape[3]))

    def classify(self, frame: np.ndarray, boxes: np.ndarray) -> list[CropLabel]:
        """One label per box (xyxy, the frame's pixels), at its best score."""
        if len(boxes) == 0:
            return []
        batch = crop_batch(frame, boxes, self.hw)
        (out,) = self.session.run(None, {self.input_name: batch})
        out = np.asarray(out, np.float32).reshape(len(boxes), -1)
        if out.shape[1] != len(self.labels):
            raise ValueError(f"classifier gave {out.shape[1]} scores for {len(self.labels)} labels")
        if (out < 0).any() or not np.allclose(out.sum(1), 1.0, atol=1e-3):  # logits, not probabilities
            e = np.exp(out - out.max(1, keepdims=True))
            out = e / e.sum(1, keepdims=True)
        best = out.argmax(1)
        return [CropLabel(self.labels[int(k)], float(out[i, k])) for i, k in enumerate(best)]
