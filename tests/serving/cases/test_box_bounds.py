"""Boxes lie inside the frame they refer to (issue #26 item 7): the shared checks, and the
review export never writes a label outside [0, 1] (review and event boxes over HTTP:
tests/serving/web/test_decision_conflicts.py; review boxes in the case service:
tests/serving/cases/test_decision_exclusivity.py)."""

from __future__ import annotations

import math

import pytest

from serving.frame_boxes import BoxError, clip_box, unit_box


def test_boxes_are_cut_to_the_frame_or_refused() -> None:
    assert clip_box([-10, 5, 700, 470], 640, 480) == [0.0, 5.0, 640.0, 470.0]
    assert clip_box([-10, 5, 7000, 470], None, None) == [0.0, 5.0, 7000.0, 470.0]  # size unknown: lower bound only
    for bad in ([0, 0, math.inf, 10], [0, 0, math.nan, 10], [0, 0, 1e12, 1e12], [10, 10, 5, 50], [1, 2, 3],
                [650, 0, 700, 40]):
        with pytest.raises(BoxError):
            clip_box(bad, 640, 480)
    assert unit_box(0.5, 0.5, 3.0, 0.2) == pytest.approx((0.5, 0.5, 1.0, 0.2))
    assert unit_box(1.5, 0.5, 0.2, 0.2) is None and unit_box(math.nan, 0.5, 0.2, 0.2) is None


def test_review_export_never_writes_a_label_outside_the_image() -> None:
    from serving.review_export import FrameLabels, yolo_lines

    labels = FrameLabels("stem", "", "cam-1", "cases", human=[("bin_overflow", [-50.0, 10.0, 1e12, 1e12]),
                                                                ("bin_overflow", [700.0, 500.0, 900.0, 600.0])],
                         pseudo=[], negatives=[])
    text = yolo_lines(labels, ["bin_overflow"], 640, 480)
    values = [float(v) for line in text.splitlines() for v in line.split()[1:]]
    assert len(text.splitlines()) == 1  # the box wholly outside the image is left out
    assert values and all(0.0 <= v <= 1.0 for v in values)
    cx, cy, w, h = values
    assert abs(cx - 0.5) < 1e-6 and abs(w - 1.0) < 1e-6 and cy - h / 2 >= 10 / 480 - 1e-6
