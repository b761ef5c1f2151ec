"""The load decision's review loop on real truck frames (issue #28, item 4), end to end:
real trucks found by the COCO teacher in ../shared/datasets (thela_india, garbage_overflow_cn)
-> muck_truck_uncovered cases in a running service -> a reviewer decides each -> `gridwatch
review export` -> `gridwatch second-stage train` -> the card's precision on held-out reviewed
truck cases, checked against the exported file itself -> `gridwatch second-stage false-alarms`.

The reviewer is scripted, and says so: nobody here has judged these trucks' loads, so the test
plays a reviewer who calls a load open when the upper half of the truck's box (where a road
camera sees the cargo bed) has more Canny edges (OpenCV, thresholds 100/200) than the median
truck of the test; anyone can check that rule on the images. The card therefore carries a
MECHANISM figure: how well the trained stage learns a reviewer's consistent rule from a few
dozen real crops, not how often it is right about real loads in the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import Detector, load_taxonomy
from detector.second_stage import CropClassifier
from serving.cli import main as gridwatch
from serving.review_export import export_reviews
from tests.support.service import event_json, push
from tests.support.shared_data import COCO_INT8, DATASETS, require_shared
from training.second_stage.examples import ReadReport, held_out_split, load_examples
from training.second_stage.load_decision import MODEL_NAME

MIN_SCORE, MIN_SIDE = 0.4, 40  # a truck the teacher is fairly sure of, big enough to see its bed
SOURCES = (("thela_india", None), ("garbage_overflow_cn", 260))  # (folder, first N images)
FIGURE = ("MECHANISM TEST, not a field precision: reviewers scripted by a stated rule (open = more Canny "
          "edges in the upper half of the truck box than the median test truck) on real COCO-teacher trucks.")


def real_trucks(detector: Detector) -> list[tuple[Path, list[float]]]:
    require_shared()
    paths = [path for source, limit in SOURCES for path in sorted((DATASETS / source / "images").glob("*.jpg"))[:limit]]
    found = []
    step = detector.batch_size  # the scan is most of this test's time: whole batches, few images in memory
    for start in range(0, len(paths), step):
        chunk = paths[start:start + step]
        for path, seen in zip(chunk, detector.detect([cv2.imread(str(p)) for p in chunk])):
            for box, score, name in zip(seen.xyxy, seen.scores, seen.class_names):
                if name == "truck" and score >= MIN_SCORE and min(box[2] - box[0], box[3] - box[1]) >= MIN_SIDE:
                    found.append((path, [float(v) for v in box]))
    return found


def edge_density(path: Path, box: list[float]) -> float:
    """The scripted reviewer's evidence: Canny edge share in the upper half of the truck's box."""
    x1, y1, x2, y2 = (int(v) for v in box)
    bed = cv2.cvtColor(cv2.imread(str(path))[y1:y1 + max(1, (y2 - y1) // 2), x1:x2], cv2.COLOR_BGR2GRAY)
    return float((cv2.Canny(bed, 100, 200) > 0).mean())


@pytest.mark.slow
def test_load_decision_learnt_from_reviews_of_real_trucks(run_service, tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    teacher = Detector(COCO_INT8, threads=2)
    trucks = real_trucks(teacher)
    assert len(trucks) >= 40, f"only {len(trucks)} real trucks found"
    densities = [edge_density(path, box) for path, box in trucks]
    median = float(np.median(densities))
    server = run_service()
    decided: dict[str, str] = {}
    with server.client(server.key("camera")) as camera:
        for i, ((path, box), density) in enumerate(zip(trucks, densities)):
            event = event_json(f"truck{i}", camera=f"cam-road-{i}", start_s=1000 * i, end_s=1000 * i + 5,
                               box=[round(v, 1) for v in box], violation="muck_truck_uncovered",
                               matter_code="37020208011", zone="road", zone_type="roadway")
            number = push(camera, event, path).json()["case_number"]
            decided[number] = "open" if density > median else "covered"
    assert len(decided) == len(trucks)  # one case per truck
    for number, load in decided.items():  # the scripted reviewer
        if load == "open":
            server.service.cases.review(number, "confirm", reviewer="amy")
        else:
            server.service.cases.review(number, "reject", reviewer="amy", reason="not_here")
    export = tmp_path / "city_reviews"
    export_reviews(server.service.db, server.service.evidence, teacher, load_taxonomy(), export)

    out = tmp_path / "stage"
    assert gridwatch(["second-stage", "train", "--review-export", str(export), "--out", str(out),
                      "--figure-note", FIGURE]) == 0
    printed = json.loads(capsys.readouterr().out)
    stage = CropClassifier(out / MODEL_NAME)
    assert (stage.stage, stage.stage_class, set(stage.labels)) == ("load_decision", "truck", {"open", "covered"})
    card = json.loads((out / "load-decision.json").read_text())
    assert card["figure"] == FIGURE and "MECHANISM TEST" in (out / "load-decision.md").read_text()

    # The card's figures are those of the exported file on the held-out reviewed cases.
    report = ReadReport()
    examples = load_examples([export], None, report)
    assert len(examples) + sum(report.skipped.values()) == len(trucks)  # every case used or counted
    _, held = held_out_split(examples, 0.25)
    said = []
    for ex in held:
        said.append(stage.classify(cv2.imread(str(ex.image)), np.array([ex.box], np.float32))[0].label)
    truth = [ex.label for ex in held]
    hits = sum(t == s == "open" for t, s in zip(truth, said))
    open_figures = next(f for f in card["held_out"] if f["label"] == "open")
    assert open_figures["support"] == truth.count("open") and open_figures["predicted"] == said.count("open")
    assert open_figures["precision"] == pytest.approx(hits / said.count("open"))
    assert printed["held_out"] == card["held_out"]
    # It learnt the reviewer's rule beyond the base rate of open loads.
    assert open_figures["precision"] > truth.count("open") / len(truth)

    # The false-alarm filter on the same replay: rejected (covered) truck cases removed while
    # keeping 95% of the confirmed ones.
    assert gridwatch(["second-stage", "false-alarms", "--review-export", str(export), "--violation",
                      "muck_truck_uncovered", "--folds", "3", "--epochs", "40", "--json",
                      str(tmp_path / "filter.json")]) == 0
    table = capsys.readouterr().out
    (figures,) = json.loads((tmp_path / "filter.json").read_text())
    assert figures["confirmed"] + figures["rejected"] == len(examples)
    assert figures["confirmed_kept"] >= 0.95 * figures["confirmed"]
    assert 0 <= figures["rejected_removed"] <= figures["rejected"]
    assert f"muck_truck_uncovered | {figures['confirmed']} | {figures['rejected']}" in table
