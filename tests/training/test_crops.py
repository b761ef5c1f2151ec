"""Native-resolution crops: which tiles, which boxes, and what a real build writes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detector.tiling import tile_grid
from serving.cli import main
from training.data.crops import native_crops
from training.data.yolo_format import read_labels


def test_crops_follow_the_inference_grid_and_rank_by_whole_small_boxes():
    # 800x400 image, tiles of 400 (grid x0 = 0, 320, 400): two window ads on the right,
    # one sign on the left, a person across the middle.
    boxes = np.array([[620, 50, 700, 120], [720, 200, 780, 260], [40, 40, 200, 100], [330, 100, 470, 380]], float)
    classes = ["window_ad", "window_ad", "shop_sign", "person"]
    crops = native_crops(800, 400, boxes, classes, tile=400, max_crops=2)
    assert [(c.tile.x0, c.tile.x1) for c in crops] == [(400, 800), (0, 400)]  # 2 ads first, then the sign
    assert {(t.x0, t.y0) for t in tile_grid(800, 400, 400)} >= {(c.tile.x0, c.tile.y0) for c in crops}
    right = crops[0]
    assert right.small_boxes == 2
    # the person is cut: 70 of its 140 px width are inside (0.5 >= MIN_VISIBLE), kept clipped
    assert right.classes == ["window_ad", "window_ad", "person"]
    np.testing.assert_allclose(right.boxes, [[220, 50, 300, 120], [320, 200, 380, 260], [0, 100, 70, 380]])
    left = crops[1]
    assert left.classes == ["shop_sign", "person"] and left.small_boxes == 1  # 70/140 inside


def test_no_crops_without_small_things_or_when_the_image_fits_one_tile():
    person = np.array([[10, 10, 100, 300]], float)
    assert native_crops(1600, 900, person, ["person"], 416) == []
    assert native_crops(400, 300, np.array([[10, 10, 50, 50]], float), ["window_ad"], 416) == []


def test_a_piece_below_min_visible_is_dropped_not_taught_whole():
    # tile 0..400: the shop sign at 380..480 is 20% inside; the window ad is whole.
    boxes = np.array([[380, 10, 480, 60], [100, 100, 150, 150]], float)
    crops = native_crops(1000, 400, boxes, ["shop_sign", "window_ad"], 400, max_crops=5)
    first = next(c for c in crops if c.tile.x0 == 0)
    assert first.classes == ["window_ad"]


@pytest.mark.slow
def test_build_writes_crops_of_real_facades_at_native_resolution(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["dataset", "build", "--sources", "facade_signs_spb", "--limit", "12", "--no-pseudo-labels",
               "--imgsz", "320", "--crops", "256", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    crops = [m for m in manifest["images"] if "crop_of" in m]
    wholes = {m["file"]: m for m in manifest["images"] if "crop_of" not in m}
    assert crops, printed
    assert manifest["counts"]["images"]["train"]["crops"] == len(crops)
    assert f"native-resolution crops written (train): {len(crops)}" in printed
    for crop in crops:
        parent = wholes[crop["crop_of"]]
        assert parent["split"] == "train" and crop["split"] == "train"  # never beside a val image
        x0, y0, x1, y1 = crop["window"]
        original = cv2.imread(parent["original"])
        pixels = cv2.imread(str(out / "images" / crop["file"]))
        assert pixels.shape[:2] == (y1 - y0, x1 - x0)
        assert max(pixels.shape[:2]) == 256 and max(original.shape[:2]) > 320  # cut from the original, not the 320 px copy
        assert np.abs(pixels.astype(int) - original[y0:y1, x0:x1].astype(int)).mean() < 4  # JPEG re-encode only
        labels = read_labels(out / "labels" / crop["file"].replace(".jpg", ".txt"))
        assert len(labels) == crop["boxes"] and any(line.class_id in (4, 5) for line in labels)  # a sign or an ad
