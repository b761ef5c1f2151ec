"""The metric arithmetic on hand-made labels and predictions: no files, no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.detections import Detections
from training.evaluation.metrics import LabelledImage, class_metrics, compute_ap, evaluate_predictions

NAMES = {0: "garbage_bin", 1: "push_cart"}


def _image(boxes, classes) -> LabelledImage:
    return LabelledImage(Path("x.jpg"), np.array(boxes, np.float32).reshape(-1, 4), classes)


def _predicted(boxes, scores, class_ids) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(class_ids, np.int64), NAMES)


def test_ap_of_a_perfect_ranking_and_a_class_nobody_labelled():
    # 0.995: the ceiling of 101-point interpolation with the closing sentinel, as in Ultralytics.
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))[0] == pytest.approx(0.995, abs=1e-3)
    with pytest.raises(ValueError, match="at least one label"):
        class_metrics(np.zeros((0, 10), bool), np.zeros(0), 0, 0.25)


def test_precision_and_recall_at_the_operating_threshold_and_the_confusion_matrix():
    images = [_image([[0, 0, 10, 10], [20, 20, 40, 40]], ["garbage_bin", "garbage_bin"]),
              _image([[0, 0, 50, 50]], ["push_cart"])]
    predictions = [
        # one bin found, one false bin at a low score, the second bin missed
        _predicted([[0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.1], [0, 0]),
        # the cart called a bin: a confusion, and the cart missed
        _predicted([[0, 0, 50, 50]], [0.8], [0]),
    ]
    result = evaluate_predictions(images, predictions, operating_threshold=0.25)
    bins, carts = result.classes["garbage_bin"], result.classes["push_cart"]
    assert (bins.instances, carts.instances) == (2, 1) and result.images == 2
    assert bins.precision == 0.5 and bins.recall == 0.5  # kept: the hit and the cart-as-bin
    assert carts.ap50 == 0.0 and carts.recall == 0.0
    assert result.confusion_names == ["garbage_bin", "push_cart", "background"]
    # rows predicted, columns true: bin hit, cart predicted as bin, a bin missed; the 0.1 box is below the threshold
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert result.to_dict() == {"classes": {n: vars(m) for n, m in result.classes.items()},
                                "map50": result.map50, "map50_95": result.map50_95}


def test_predictions_must_match_the_images_one_to_one():
    with pytest.raises(ValueError):
        evaluate_predictions([_image([], [])] * 2, [Detections.empty(NAMES)])
