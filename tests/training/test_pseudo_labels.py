"""Teacher pseudo-labels: context classes only, never contradicting a human box, cached."""

from __future__ import annotations

import numpy as np
import pytest

from detector.files import sha256_file
from tests.support.shared_data import COCO_INT8, DATASETS
from training.data.pseudo_labels import CONTEXT_CLASSES, Teacher, conflicting
from training.data.sources import load_source


def test_a_cart_the_teacher_calls_a_truck_stays_a_cart():
    cart = np.array([[100, 100, 200, 180]], float)
    assert conflicting(np.array([105, 95, 210, 185.0]), "truck", cart, ["push_cart"]) == "push_cart"
    # The wheel seen as a bicycle: small, but inside the cart.
    assert conflicting(np.array([110, 150, 140, 180.0]), "bicycle", cart, ["push_cart"]) == "push_cart"
    # The vendor standing at the cart is a real person; a car elsewhere is a real car.
    assert conflicting(np.array([190, 60, 240, 200.0]), "person", cart, ["push_cart"]) is None
    assert conflicting(np.array([300, 100, 400, 180.0]), "car", cart, ["push_cart"]) is None


def test_a_face_on_a_window_ad_is_not_a_person():
    ad = np.array([[50, 50, 150, 200]], float)
    assert conflicting(np.array([70, 60, 120, 190.0]), "person", ad, ["window_ad"]) == "window_ad"
    # Someone walking past the window, mostly outside its box, is a person.
    assert conflicting(np.array([120, 40, 190, 260.0]), "person", ad, ["window_ad"]) is None


@pytest.mark.skipif(not COCO_INT8.is_file(), reason=f"no teacher at {COCO_INT8}")
def test_teacher_labels_context_classes_and_caches_them(tmp_path):
    import cv2

    thela = load_source("thela_india", DATASETS).samples()
    teacher = Teacher(COCO_INT8, tmp_path / "cache", threads=1)
    found = 0
    for sample in thela[:6]:
        bgr = cv2.imread(str(sample.image))
        key = sha256_file(sample.image)
        labels = teacher.label(key, bgr, sample.boxes, sample.classes, score=0.4)
        assert set(labels.classes) <= CONTEXT_CLASSES
        assert all(s >= 0.4 for s in labels.scores)
        for box, name in zip(labels.boxes, labels.classes):
            assert conflicting(box, name, sample.boxes, sample.classes) is None
        found += len(labels.classes)
        # A lower threshold is served from the same cache and only adds boxes.
        lower = teacher.label(key, bgr, sample.boxes, sample.classes, score=0.2)
        assert len(lower.classes) >= len(labels.classes)
    assert found > 0, "Indian road scenes have people and vehicles in them"
    assert teacher.misses == 6 and teacher.hits == 6
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 6
    with pytest.raises(ValueError, match="cache floor"):
        teacher.label(key, bgr, sample.boxes, sample.classes, score=0.05)
