"""Tiled inference: tiles cover the frame, cut boxes merge back into one, every pyramid level's
boxes land in the frame's pixels, and a small real object that the whole-frame pass misses is
found at native resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector import Detections
from detector.boxes import box_iou
from detector.tiling import (
    LARGEST_IN_TILE, PYRAMID_STEP, Tile, detect_tiled, merge, pyramid, tiled_check, tile_grid, uncut,
)
from tests.support.shared_data import shared_available
from tests.support.streams import seed_detector, seed_props


@pytest.mark.parametrize("size", [(1920, 1080), (2560, 1440), (640, 360), (448, 448), (1000, 449)])
def test_tiles_cover_the_frame_with_overlap(size: tuple[int, int]) -> None:
    w, h = size
    tiles = tile_grid(w, h, 448, 0.2)
    covered = np.zeros((h, w), bool)
    for t in tiles:
        assert 0 <= t.x0 < t.x1 <= w and 0 <= t.y0 < t.y1 <= h
        assert t.x1 - t.x0 == min(448, w) and t.y1 - t.y0 == min(448, h)
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 448 * 0.8 for a, b in zip(xs, xs[1:]))  # neighbours share >= 20%
    if w <= 448 and h <= 448:
        assert len(tiles) == 1


def test_pieces_cut_by_inner_borders_drop_and_duplicates_merge() -> None:
    tile = Tile(400, 0, 848, 448)  # a middle tile of a 1920x1080 frame, top row
    found = Detections(
        xyxy=np.array([[1, 100, 60, 200],      # touches the left inner border: a cut piece
                       [100, 100, 200, 200],   # whole inside
                       [300, 0, 400, 50],      # touches the top, which is the frame's edge: kept
                       [350, 300, 447, 400]],  # touches the right inner border
                      np.float32),
        scores=np.full(4, 0.8, np.float32), class_ids=np.zeros(4, np.int64), names={0: "a"})
    assert uncut(found, tile, 1920, 1080).tolist() == [False, True, True, False]
    # The same object from an overlapping tile and from the whole frame: one box; another
    # class in the same place stays.
    a = Detections(xyxy=np.array([[500, 100, 600, 200]], np.float32), scores=np.array([0.9], np.float32),
                   class_ids=np.array([0]), names={0: "a", 1: "b"})
    b = Detections(xyxy=np.array([[502, 101, 601, 199], [500, 100, 600, 200]], np.float32),
                   scores=np.array([0.7, 0.6], np.float32), class_ids=np.array([0, 1]), names={0: "a", 1: "b"})
    merged = merge([a, b], iou_threshold=0.7, max_detections=300, frame_size=1920)
    assert merged.class_ids.tolist() == [0, 1] and merged.scores.tolist() == pytest.approx([0.9, 0.6])


@pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")
def test_small_person_is_found_only_at_native_resolution() -> None:
    detector, props = seed_detector(), seed_props()
    frame = cv2.resize(props.background, (2560, 1440), interpolation=cv2.INTER_LINEAR)
    person = props.sized("person", 80)  # a real person cut from thela_india, 80 px tall
    ph, pw = person.shape[:2]
    frame[900:900 + ph, 1500:1500 + pw] = person
    truth = np.array([[1500, 900, 1500 + pw, 900 + ph]], np.float32)

    def found(dets: Detections) -> bool:
        people = dets.with_classes({"person"})
        return bool(len(people)) and float(box_iou(people.xyxy, truth).max()) >= 0.5

    assert not found(detector.detect([frame])[0])  # shrunk 4x to 640 px it is 20 px tall: missed
    tiled = detector.detect_tiled(frame)
    assert found(tiled)
    assert (tiled.xyxy[:, [0, 2]] <= 2560).all() and (tiled.xyxy[:, [1, 3]] <= 1440).all()
    # A frame no larger than a tile is exactly the plain detection.
    small = cv2.resize(frame, (640, 360))
    plain, once = detector.detect([small])[0], detector.detect_tiled(small)
    assert np.array_equal(plain.xyxy, once.xyxy) and np.array_equal(plain.scores, once.scores)


def test_pyramid_levels_step_down_to_where_the_whole_frame_takes_over() -> None:
    assert pyramid(1920, 1080, 448) == pytest.approx([1.0, 2 ** -0.5, 0.5, 2 ** -1.5])  # 1920, 1358, 960, 679
    assert pyramid(768, 432, 448) == [1.0]  # a 768 px photo: native resolution only
    assert pyramid(600, 400, 448) == []  # within a step of the whole-frame pass: no tiles
    for tile in (0, -5):  # once an endless loop (gridwatch eval --tiles -5)
        with pytest.raises(ValueError, match="a tile is at least"):
            pyramid(1920, 1080, tile)
    levels = pyramid(3840, 2160, 448)
    assert 3840 * levels[-1] > 448 * PYRAMID_STEP >= 3840 * levels[-1] / PYRAMID_STEP


class _BlobFinder:
    """A detector stand-in that boxes every bright blob of the image it is given, in that image's
    pixels, and, as a real model does with a thing larger than it learnt, a blob longer than half
    its input as two boxes of its halves: the tiling's arithmetic and its size rule are under test."""

    input_size = (448, 448)
    iou_threshold, max_detections = 0.7, 300
    names = {0: "blob"}

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        out = []
        for image in images:
            self.seen.append(image.shape[:2])
            n, _, stats, _ = cv2.connectedComponentsWithStats((image[..., 0] > 128).astype(np.uint8))
            boxes = []
            for x, y, w, h, _ in stats[1:]:
                whole = max(image.shape[:2]) <= 448 and max(w, h) > 224  # a tile or the whole frame's input
                boxes += [[x, y, x + w // 2, y + h], [x + w // 2, y, x + w, y + h]] if whole else [[x, y, x + w, y + h]]
            boxes = np.array(boxes, np.float32).reshape(-1, 4)
            out.append(Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.zeros(len(boxes), np.int64),
                                  self.names))
        return out


SMALL = (1000, 700, 1040, 730)  # 40 px: inside tiles of every level
MEDIUM = (1100, 1100, 1400, 1400)  # 300 px, whole inside one native tile: halves there, whole a level down
LARGE = (2000, 300, 3300, 1900)  # 1300 px: cut by the tiles of every level


def _blobs_4k() -> np.ndarray:
    frame = np.zeros((2160, 3840, 3), np.uint8)
    for x0, y0, x1, y1 in (SMALL, MEDIUM, LARGE):
        frame[y0:y1, x0:x1] = 255
    return frame


def test_every_level_maps_its_boxes_back_onto_the_frame_and_large_things_come_from_coarse_passes() -> None:
    frame = _blobs_4k()
    small, medium, large = SMALL, MEDIUM, LARGE
    finder = _BlobFinder()
    found = detect_tiled(finder, frame)
    levels = pyramid(3840, 2160, 448)
    assert len(levels) >= 4 and finder.seen[-1] == (2160, 3840)  # the tiles of every level, then the whole frame
    assert len(finder.seen) - 1 == sum(len(tile_grid(round(3840 * s), round(2160 * s), 448)) for s in levels)
    # One box each, where it is in the frame (within a pixel per level of downscaling): the halves
    # boxed where a thing is longer than LARGEST_IN_TILE of a tile were left to coarser passes.
    assert len(found) == 3
    for truth in (small, medium, large):
        assert box_iou(found.xyxy, np.array([truth], np.float32)).max() > 0.9
    assert 300 > LARGEST_IN_TILE * 448 >= 300 * levels[1]


def test_a_check_run_a_part_at_a_time_finds_what_one_run_finds() -> None:
    """The service runs a check's images a few beside each batch: the parts together are the
    one run, image for image, and the result is only there once the last image has run."""
    frame = _blobs_4k()
    whole_run = detect_tiled(_BlobFinder(), frame)
    finder = _BlobFinder()
    check = tiled_check(finder, frame)
    parts = []
    while not check.done:
        before = len(finder.seen)
        if len(parts) < 3:
            with pytest.raises(RuntimeError):
                check.result  # noqa: B018 - reading it before the end is the error under test
        check.run(5)
        parts.append(len(finder.seen) - before)
    assert sum(parts) == check.images == len(finder.seen) and max(parts) == 5 and len(parts) >= 8
    assert finder.seen[-1] == (2160, 3840)  # the whole frame last, as in one run
    assert np.array_equal(check.result.xyxy, whole_run.xyxy) and np.array_equal(check.result.scores, whole_run.scores)
    assert check.run(5) and len(finder.seen) == check.images  # a complete check runs nothing more
