"""The review val split is judged on people's labels: the reviewers' boxes are the truth, the
model's own pseudo-labels are not, and on a frame of cases only detections on a decided object count."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from detector.detections import Detections
from detector.taxonomy import load_taxonomy
from tests.support.shared_data import DATASETS
from training.evaluation.evaluate import EvalSet
from training.evaluation.metrics import LabelledImage
from training.evaluation.review_judging import human_review_split
from training.data.sources import Source

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason="no shared datasets")


def test_human_labels_only_and_decided_regions(tmp_path):
    photo = sorted((DATASETS / "garbage_overflow_cn" / "images").glob("*.jpg"))[0]
    city = tmp_path / "city"
    (city / "images").mkdir(parents=True)
    shutil.copyfile(photo, city / "images" / "cam-1-aaaa.jpg")
    shutil.copyfile(photo, city / "images" / "label-cam-2-20261205T101010Z-bbbb.jpg")
    h, w = cv2.imread(str(photo)).shape[:2]
    frames = {
        "cam-1-aaaa": {"decision": "cases", "decisions": ["corrected", "rejected:false_alarm"],
                       "human": [["bin_overflow", [100, 100, 300, 300]]],
                       "negatives": [["garbage_pile", [400, 400, 500, 500]]],
                       "pseudo": [["garbage_bin", [10, 400, 90, 500]], ["person", [500, 20, 600, 200]]]},
        "label-cam-2-20261205T101010Z-bbbb": {"decision": "labelled", "decisions": [],
                                              "human": [["garbage_bin", [10, 10, 60, 60]]], "negatives": [],
                                              "pseudo": []},
    }
    (city / "manifest.json").write_text(json.dumps({"frames": frames}))
    built = tmp_path / "built"
    built.mkdir()
    images = []
    for stem in frames:  # the build re-encoded them at half size
        path = built / f"city__{stem}.jpg"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(photo)), (w // 2, h // 2)))
        # the built labels hold pseudo-labels too: they are what must not be scored
        images.append(LabelledImage(path=path, boxes=np.zeros((3, 4), np.float32), classes=["a", "b", "c"]))
    source = Source(name="city", path=city, format="yolo", licence="x", attribution="x", class_map={})
    split = human_review_split(EvalSet(root=built, source="built", images=images, dropped_labels=0), [source])

    cases, labelled = split.frames
    assert cases.image.classes == ["bin_overflow"]
    np.testing.assert_allclose(cases.image.boxes, [[50, 50, 150, 150]], atol=0.5)
    assert labelled.image.classes == ["garbage_bin"] and labelled.regions is None
    summary = split.summary()
    assert "2 frames" in summary and "1 corrected" in summary and "1 false alarms" in summary
    assert "1 labelled-mode frames" in summary and "2 pseudo-labels not scored" in summary

    names = dict(enumerate(load_taxonomy().all_detector_classes))
    ids = {n: i for i, n in names.items()}
    # on the decided object, on the false alarm, and on something nobody decided about
    found = Detections(xyxy=np.array([[50, 50, 150, 150], [200, 200, 250, 250], [5, 200, 45, 250]], np.float32),
                       scores=np.array([0.9, 0.8, 0.7], np.float32),
                       class_ids=np.array([ids["bin_overflow"], ids["garbage_pile"], ids["garbage_bin"]]), names=names)
    kept = list(split.predictions(lambda frame: found))
    assert [d.class_names for d in kept] == [["bin_overflow", "garbage_pile"],
                                             ["bin_overflow", "garbage_pile", "garbage_bin"]]


def test_retrain_log_names_the_classes_whose_ap50_fell():
    from training.evaluation.metrics import ClassMetrics, EvalResult
    from training.promotion.promote import decide_loop

    def result(**ap50):
        classes = {n: ClassMetrics(ap50=v, ap50_95=v / 2, precision=0.5, recall=0.5, instances=40)
                   for n, v in ap50.items()}
        return EvalResult(classes=classes, map50=0.0, map50_95=0.0)

    base_champion, base_challenger = result(person=0.8, truck=0.70), result(person=0.82, truck=0.57)
    review = result(bin_overflow=0.6)
    summary = decide_loop(base_challenger, base_champion, result(bin_overflow=0.7), review).summary()
    assert "AP50 fell by more than 5 points on the base split: truck 0.700 -> 0.570 (40 val boxes)" in summary
    assert "person" not in summary.split("fell")[1].split("\n")[0]
