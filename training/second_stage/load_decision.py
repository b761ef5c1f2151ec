"""`gridwatch second-stage train`: the truck load decision from a city's reviews.

Review exports -> truck crops labelled open / covered (and mesh, tarp, cannot_tell from a load
labels file) -> frames held out -> the small CNN trained on the rest -> ONNX in OUT -> the
exported file judged on the held-out crops as the detector runtime runs it -> the card.
Set `load_classifier` to the ONNX file and `muck_truck_uncovered` files only open loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detector.second_stage import LOAD_DECISION, OPEN, CropClassifier
from training.second_stage.card import StageCard, per_class
from training.second_stage.examples import (
    KNOWN_LOADS, LOAD_CLASS, CropExample, ReadReport, held_out_split, load_examples,
)
from training.second_stage.net import TrainOptions, crops, export_onnx, label_counts, train

MODEL_NAME = "load-decision.onnx"
REVIEWS_FIGURE = ("precision and recall of the exported model on held-out truck cases of these review exports, "
                  "each labelled by the load its reviewer said on the review page, else by the decision (open = "
                  "confirmed, covered = rejected as not a violation here); a field figure for the cameras and reviewers the exports come from, and only "
                  "as large a sample as the held-out counts say.")


class TrainingError(ValueError):
    """Too little to learn from; the message says what is missing."""


@dataclass(frozen=True)
class TrainResult:
    model: Path
    card: StageCard
    card_path: Path


def train_load_decision(exports: list[Path], out: Path, *, load_labels: dict[str, list[str]] | None = None,
                        held_out: float = 0.25, options: TrainOptions = TrainOptions(), figure: str = "",
                        log: Callable[[str], None] = print) -> TrainResult:
    report = ReadReport()
    examples = load_examples(exports, load_labels, report)
    labels = [label for label in KNOWN_LOADS if any(ex.label == label for ex in examples)]
    if OPEN not in labels or len(labels) < 2:
        raise TrainingError(f"need reviewed trucks both open and covered; have {label_counts(examples) or 'none'} "
                            f"(skipped: {dict(report.skipped) or 'none'})")
    train_set, held = held_out_split(examples, held_out)
    if not held or {ex.label for ex in train_set} != set(labels):
        raise TrainingError(f"too few frames to hold some out and still train every label: {label_counts(examples)}")
    log(f"load decision: {len(train_set)} train crops {label_counts(train_set)}, "
        f"{len(held)} held out {label_counts(held)}")
    index = {label: i for i, label in enumerate(labels)}
    net = train(crops(train_set, options.size), np.array([index[ex.label] for ex in train_set]), labels, options,
                log=log)
    model = export_onnx(net, out / MODEL_NAME, labels, stage_class=LOAD_CLASS, size=options.size,
                        stage=LOAD_DECISION)
    predicted = predict(model, held)
    card = StageCard(
        stage=LOAD_DECISION, stage_class=LOAD_CLASS, labels=labels, model=model.name,
        figure=figure or REVIEWS_FIGURE, exports=[str(e) for e in exports],
        train_counts=label_counts(train_set), held_out_counts=label_counts(held),
        held_out=per_class([ex.label for ex in held], predicted, labels),
        skipped=dict(report.skipped), options=asdict(options))
    card_path, _ = card.write(out)
    return TrainResult(model, card, card_path)


def predict(model: Path, examples: list[CropExample]) -> list[str]:
    """Labels the exported file gives, through the serving runtime's own classifier."""
    import cv2

    stage = CropClassifier(model, threads=1)
    out: dict[int, str] = {}
    by_image: dict[Path, list[int]] = {}
    for i, ex in enumerate(examples):
        by_image.setdefault(ex.image, []).append(i)
    for image, indices in by_image.items():
        labels = stage.classify(cv2.imread(str(image)), np.asarray([examples[i].box for i in indices], np.float32))
        out.update((i, label.label) for i, label in zip(indices, labels))
    return [out[i] for i in range(len(examples))]

