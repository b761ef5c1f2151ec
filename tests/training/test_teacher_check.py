"""The model against the COCO teacher on the context classes (issue #28, item 2), on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.shared_data import DATASETS
from training.evaluation.teacher_check import TEACHERS, compare_to_teachers, matched

SHIPPED = Path(__file__).parents[2] / "weights" / "gridwatch-int8.onnx"

pytestmark = pytest.mark.skipif(not DATASETS.is_dir() or not TEACHERS[0].is_file(),
                                reason="needs ../shared datasets and teacher weights")


def _street_images(n: int) -> list[Path]:
    # thela_india: Indian streets full of people, cars and motorbikes
    return sorted((DATASETS / "thela_india").rglob("*.jpg"))[:n]


def test_matching_is_one_to_one():
    reference = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)  # two boxes on one object
    assert matched(reference, np.array([[0, 0, 10, 10]], np.float32)) == 1
    assert matched(reference, reference.copy()) == 2
    assert matched(reference, np.array([[20, 20, 30, 30]], np.float32)) == 0
    assert matched(reference, np.zeros((0, 4), np.float32)) == 0


def test_a_teacher_finds_all_of_its_own_boxes_and_the_shipped_model_is_counted_against_it():
    images = _street_images(12)
    itself = compare_to_teachers(TEACHERS[0], images, teachers=TEACHERS[:1])
    counts = itself.counts[TEACHERS[0].name]
    assert itself.images == 12 and counts["person"]["teacher"] > 0
    for name, c in counts.items():
        assert c["found"] == c["teacher"] == c["ours"], name

    shipped = compare_to_teachers(SHIPPED, images, teachers=TEACHERS[:1]).counts[TEACHERS[0].name]
    for name, c in shipped.items():
        assert c["teacher"] == counts[name]["teacher"] and c["found"] <= min(c["teacher"], c["ours"]), name
    assert shipped["person"]["found"] > 0


def test_no_teacher_at_hand_gives_no_comparison(tmp_path):
    assert compare_to_teachers(SHIPPED, _street_images(1), teachers=(tmp_path / "absent.onnx",)) is None
