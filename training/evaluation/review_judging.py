"""The review val split as `gridwatch retrain` judges it: on what people decided, nothing else.

The built review frames carry the current model's own pseudo-labels beside the reviewers'
labels (so training sees whole frames), but a champion scored on its own pseudo-labels wins by
construction. Here each review val frame is scored against its human labels only, from the
review export's manifest.json:

  - a frame of reviewed cases: the boxes people confirmed, corrected or drew are the truth, and
    only detections on a decided object count (those labels, or the false alarms: a detection
    there is a false positive, the hard negative); the rest of the frame nobody looked at;
  - a frame from the labelling mode: a person went over all of it, every detection counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.boxes import box_iou
from detector.detections import Detections
from detector.runtime import DEFAULT_SCORE_THRESHOLD
from training.evaluation.evaluate import EvalError, EvalSet, onnx_predictor, read_frame
from training.data.importers import image_size
from training.evaluation.metrics import EvalResult, LabelledImage, evaluate_predictions
from training.data.sources import Source

DECIDED_IOU = 0.1  # a detection touching a decided object this much is about that object


@dataclass
class JudgedFrame:
    image: LabelledImage  # the built val image with its human labels only
    regions: np.ndarray | None  # (R, 4) decided objects; None: the whole frame was labelled


@dataclass
class HumanReviewSplit:
    frames: list[JudgedFrame]
    counts: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        c = self.counts
        return (f"review val split judged on human labels only: {len(self.frames)} frames; decisions "
                f"{c['confirmed']} confirmed, {c['corrected']} corrected, {c['rejected']} rejected as not a violation, "
                f"{c['false_alarm']} false alarms (negatives); {c['labelled']} labelled-mode frames; "
                f"{c['human_boxes']} human boxes, {c['negative_boxes']} negative boxes; "
                f"{c['pseudo_ignored']} pseudo-labels not scored")

    def predictions(self, predict: Callable[[np.ndarray], Detections]) -> Iterator[Detections]:
        for frame in self.frames:
            found = predict(read_frame(frame.image.path))
            if frame.regions is not None and len(found):
                touching = (box_iou(found.xyxy.astype(np.float64), frame.regions).max(axis=1) >= DECIDED_IOU
                            if len(frame.regions) else np.zeros(len(found), bool))
                found = found[touching]
            yield found

    def evaluate(self, model: Path, threshold: float = DEFAULT_SCORE_THRESHOLD) -> EvalResult:
        predict, _ = onnx_predictor(model)
        return evaluate_predictions([f.image for f in self.frames], self.predictions(predict), threshold)


def human_review_split(review: EvalSet, sources: Sequence[Source]) -> HumanReviewSplit:
    """The review val images of a built dataset (named `source__stem`), with the human labels and
    decided regions of their review export frames, in the built image's pixels."""
    manifests = {}
    for source in sources:
        try:
            manifests[source.name] = json.loads((source.path / "manifest.json").read_text(encoding="utf-8"))["frames"]
        except (OSError, ValueError, KeyError) as exc:
            raise EvalError(f"{source.path}: unreadable review manifest.json ({exc})") from None
    by_source = {s.name: s for s in sources}
    split = HumanReviewSplit(frames=[])
    for image in review.images:
        name, _, stem = Path(image.path).stem.partition("__")
        frame = manifests.get(name, {}).get(stem)
        if frame is None:
            raise EvalError(f"{image.path}: no frame {stem!r} in {by_source[name].path / 'manifest.json'}"
                            if name in by_source else f"{image.path}: not a review frame")
        original = next((p for p in (by_source[name].path / "images").glob(f"{stem}.*")), None)
        built = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
        if original is None or built is None:
            raise EvalError(f"{image.path}: its image or the export's original is missing")
        ow, oh = image_size(original)
        scale = np.array([built.shape[1] / ow, built.shape[0] / oh] * 2)
        human = frame.get("human", [])
        negatives = frame.get("negatives", [])
        boxes = (np.asarray([b for _, b in human], np.float64).reshape(-1, 4) * scale).astype(np.float32)
        labelled = frame.get("decision") == "labelled"
        regions = None if labelled else np.vstack([
            boxes.astype(np.float64), np.asarray([b for _, b in negatives], np.float64).reshape(-1, 4) * scale])
        split.frames.append(JudgedFrame(LabelledImage(path=image.path, boxes=boxes, classes=[c for c, _ in human]),
                                        regions))
        counts = split.counts
        if labelled:
            counts["labelled"] += 1
        for decision in frame.get("decisions", []):
            kind = decision.split(":", 1)
            counts["false_alarm" if kind[-1] == "false_alarm" else kind[0]] += 1
        counts["human_boxes"] += len(human)
        counts["negative_boxes"] += len(negatives)
        counts["pseudo_ignored"] += len(frame.get("pseudo", []))
    return split
