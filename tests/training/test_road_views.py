"""Road-camera variants of truck and bus images, and the teacher's second look at vehicles."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detector.files import SHARED_DIR
from training.data.pseudo_labels import VIEW_SCORE, fuse_views, with_agreed_vehicles
from training.data.road_views import has_road_vehicle, render

THELA = SHARED_DIR / "datasets" / "thela_india"


def real_street() -> np.ndarray:
    image = cv2.imread(str(sorted((THELA / "images").rglob("*.jpg"))[0]))
    assert image is not None
    return image


def test_a_variant_keeps_its_boxes_on_the_same_pixels():
    bgr = real_street()
    h, w = bgr.shape[:2]
    boxes = np.array([[0.3 * w, 0.4 * h, 0.7 * w, 0.9 * h], [0.05 * w, 0.05 * h, 0.2 * w, 0.3 * h]])
    styles = set()
    for seed in range(12):
        view = render(bgr, boxes, np.random.default_rng(seed))
        styles.update(view.styles)
        assert view.image.shape == bgr.shape and view.image.dtype == np.uint8
        assert len(view.boxes) == int(view.keep.sum())
        assert (view.boxes[:, [0, 2]] <= w).all() and (view.boxes[:, [1, 3]] <= h).all() and (view.boxes >= 0).all()
        if "overhead" not in view.styles:
            np.testing.assert_allclose(view.boxes, boxes[view.keep])  # photometric only: boxes unchanged
        else:
            # looking down narrows the top of the frame: a box keeps its bottom edge and moves inward
            assert not np.allclose(view.boxes, boxes[view.keep])
        assert not np.array_equal(view.image, bgr)
    assert {"overhead", "night", "infrared", "text"} <= styles


def test_only_frames_with_a_truck_or_bus_get_variants():
    assert has_road_vehicle(["person", "truck"]) and has_road_vehicle(["bus"])
    assert not has_road_vehicle(["car", "push_cart", "person"])


def view(boxes, scores, classes):
    return {"boxes": boxes, "scores": scores, "classes": classes}


EMPTY = view([], [], [])


def test_a_vehicle_the_views_agree_on_becomes_a_pseudo_label():
    truck = [10.0, 10.0, 100.0, 100.0]
    agreed = [view([truck], [0.35], ["truck"])] * 3 + [view([[12.0, 10.0, 100.0, 102.0]], [0.3], ["bus"])]
    fused = fuse_views(agreed)
    assert len(fused) == 1 and fused[0][1] == "truck" and fused[0][2] >= VIEW_SCORE
    out = with_agreed_vehicles(EMPTY, agreed, score=0.4)
    assert out["classes"] == ["truck"] and out["scores"] == [0.4]
    # the same score in one view of four is not agreement
    alone = [view([truck], [0.35], ["truck"]), EMPTY, EMPTY, EMPTY]
    assert with_agreed_vehicles(EMPTY, alone, score=0.4)["classes"] == []


def test_a_vehicle_the_first_teacher_keeps_is_not_added_twice():
    truck = [10.0, 10.0, 100.0, 100.0]
    raw = view([truck], [0.8], ["truck"])
    out = with_agreed_vehicles(raw, [view([truck], [0.8], ["truck"])] * 4, score=0.4)
    assert out["classes"] == ["truck"]


@pytest.mark.parametrize("k", [2])
def test_build_writes_road_views_as_synthetic_in_both_splits(tmp_path, k):
    from serving.cli import main

    out = tmp_path / "built"
    rc = main(["dataset", "build", "--sources", "thela_india", "--limit", "24", "--out", str(out),
               "--road-views", str(k), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["road_views"] == k
    views = [e for e in manifest["images"] if "roadview" in e["file"]]
    assert views, "the thela photos hold trucks and buses the teacher finds"
    for entry in views:
        assert entry["synthetic"] is True and entry["file"].split("/", 1)[1].startswith("synthetic__roadview_")
        image = out / "images" / entry["file"]
        label = out / "labels" / entry["file"].replace(".jpg", ".txt")
        assert image.is_file() and label.is_file()
    backgrounds = {e["background"] for e in views}
    assert len(views) == k * len(backgrounds)
    report = json.loads((out / "report.json").read_text())
    assert sum(report["road_views"][s]["images"] for s in ("train", "val")) == len(views)
