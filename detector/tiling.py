"""Tiled inference: small things at full resolution, whatever the camera's resolution.

A flyer or a window ad is a few dozen pixels in a 1080p frame; shrunk to the model's
448 px input it is a handful, below what the model can see. Slicing the frame into
overlapping tiles of the model's own input size runs each part at native resolution
(as SAHI does); the whole frame runs too, so large things are still seen whole. All
slices go through one session in batches.

Native resolution alone is not enough: the model learnt each class at the sizes its
training photos show, and a 4K camera shows a window ad three times larger than a
768 px facade photo does. Tiled only at native resolution, such frames scored worse
than the whole frame alone (on the facade val photos upscaled 3x: window_ad AP50 0.127
tiled against 0.202 whole, car 0.633 against 0.853), with parts of large things boxed
as things. So the frame is tiled at every level of a pyramid, each level PYRAMID_STEP
smaller, down to where the whole-frame pass takes over; each level keeps only boxes up
to LARGEST_IN_TILE of a tile (a larger one is a part, or a thing a coarser level sees
whole), as SNIP trains and tests each scale on its own range of sizes.

Merging: a box that touches a tile's inner border is a cut piece of something larger
and is dropped; anything smaller than the overlap lies whole inside some tile, and
anything larger is seen at a coarser level or by the whole-frame pass. What remains is
de-duplicated by the detector's own class-aware NMS. (Merging pieces into union boxes,
as SAHI's NMM does, snowballs across low-score boxes at evaluation thresholds.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from detector.boxes import nms
from detector.detections import Detections

if TYPE_CHECKING:
    from detector.runtime import Detector

DEFAULT_OVERLAP = 0.2
EDGE_MARGIN = 2.0  # pixels: a box this close to a tile's inner border was cut by it
PYRAMID_STEP = 2 ** 0.5  # each level within this factor of the next: every size lands near a trained one
LARGEST_IN_TILE = 0.5  # of the tile's side: a longer box is left to a coarser level or the whole frame


@dataclass(frozen=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int


def tile_grid(width: int, height: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[Tile]:
    """Overlapping square tiles covering the frame; the last row and column are pushed back
    inside the frame rather than padded. A frame no larger than one tile is one tile."""
    if tile <= 0 or not 0 <= overlap < 1:
        raise ValueError("tile must be positive and overlap within [0, 1)")
    step = max(1, int(tile * (1 - overlap)))

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        out = list(range(0, size - tile, step))
        out.append(size - tile)
        return out

    return [Tile(x, y, min(x + tile, width), min(y + tile, height))
            for y in starts(height) for x in starts(width)]


def uncut(dets: Detections, tile: Tile, width: int, height: int) -> np.ndarray:
    """Mask of the boxes (in tile pixels) that no inner border of the tile cuts; a tile's
    side on the frame's own edge cuts nothing."""
    x1, y1, x2, y2 = dets.xyxy.T
    tw, th = tile.x1 - tile.x0, tile.y1 - tile.y0
    return (((tile.x0 == 0) | (x1 > EDGE_MARGIN)) & ((tile.x1 == width) | (x2 < tw - EDGE_MARGIN))
            & ((tile.y0 == 0) | (y1 > EDGE_MARGIN)) & ((tile.y1 == height) | (y2 < th - EDGE_MARGIN)))


def merge(pieces: list[Detections], iou_threshold: float, max_detections: int, frame_size: int) -> Detections:
    """One frame's detections from several passes: class-aware NMS over all of them."""
    joined = Detections(
        xyxy=np.concatenate([d.xyxy for d in pieces]).reshape(-1, 4).astype(np.float32),
        scores=np.concatenate([d.scores for d in pieces]).astype(np.float32),
        class_ids=np.concatenate([d.class_ids for d in pieces]).astype(np.int64),
        names=pieces[0].names,
    )
    # Offsetting each class by more than the frame keeps classes apart in one NMS pass.
    offset = (joined.class_ids * float(frame_size + 1))[:, None]
    return joined[nms(joined.xyxy + offset, joined.scores, iou_threshold, max_detections)]


MIN_TILE = 32


def pyramid(width: int, height: int, tile: int) -> list[float]:
    """The scales at which a frame is tiled: native resolution, then each level PYRAMID_STEP
    smaller while the level is still more than PYRAMID_STEP tiles across (below that, the
    whole-frame pass already shows it within a step). A frame that small has no level."""
    if tile < MIN_TILE:  # a tile of 0 or less would never end the loop below
        raise ValueError(f"a tile is at least {MIN_TILE} px, got {tile}")
    scales, scale = [], 1.0
    while max(width, height) * scale > tile * PYRAMID_STEP:
        scales.append(scale)
        scale /= PYRAMID_STEP
    return scales


class TiledCheck:
    """One frame's tiled detection, run a few images at a time: a service with many cameras
    runs a part of it beside each batch of ordinary frames, where the whole check (35 images
    for a 1080p frame) would hold every camera's frames for half a second.

    The images are the tiles of each pyramid level, then the whole frame. `detect` is the
    detector's batch call; the check keeps it, so a model swapped in meanwhile does not mix
    two models' boxes in one result."""

    def __init__(self, detect: Callable[[list[np.ndarray]], list[Detections]], frame: np.ndarray, *,
                 size: int, iou_threshold: float, max_detections: int,
                 overlap: float = DEFAULT_OVERLAP) -> None:
        h, w = frame.shape[:2]
        self.detect = detect
        self.frame = frame
        self.size = size
        self._merge_limits = (iou_threshold, max_detections)
        self._cuts: list[tuple[np.ndarray, Tile, float]] = []  # level image, tile of it, level scale
        for scale in pyramid(w, h, size):
            level = frame if scale == 1.0 else cv2.resize(
                frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
            self._cuts += [(level, t, scale) for t in tile_grid(level.shape[1], level.shape[0], size, overlap)]
        self._found: list[Detections] = []  # per image run so far, in order (the whole frame last)
        self._result: Detections | None = None

    @property
    def images(self) -> int:
        """How many images the whole check runs (tiles and the whole frame)."""
        return len(self._cuts) + 1

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> Detections:
        if self._result is None:
            raise RuntimeError("the tiled check has images left to run")
        return self._result

    def run(self, max_images: int | None = None) -> bool:
        """Run up to `max_images` of the images left (None: all of them); True once the check
        is complete and `result` holds the frame's detections."""
        if self._result is not None:
            return True
        start = len(self._found)
        stop = self.images if max_images is None else min(self.images, start + max(1, max_images))
        # Slices are views: no copy of a level until the letterbox writes the model input.
        images = [level[t.y0:t.y1, t.x0:t.x1] for level, t, _ in self._cuts[start:stop]]
        if stop == self.images:
            images.append(self.frame)
        self._found += self.detect(images)
        if len(self._found) == self.images:
            self._result = self._merged()
        return self._result is not None

    def _merged(self) -> Detections:
        *per_tile, whole = self._found
        if not self._cuts:
            return whole
        h, w = self.frame.shape[:2]
        pieces = [whole]
        for (level, t, scale), found in zip(self._cuts, per_tile):
            sides = np.maximum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
            kept = found[uncut(found, t, level.shape[1], level.shape[0]) & (sides <= LARGEST_IN_TILE * self.size)]
            xyxy = (kept.xyxy + np.array([t.x0, t.y0, t.x0, t.y0], np.float32)) / np.float32(scale)
            pieces.append(Detections(xyxy=xyxy, scores=kept.scores, class_ids=kept.class_ids, names=kept.names))
        return merge(pieces, *self._merge_limits, max(w, h))


def tiled_check(detector: Detector, frame: np.ndarray, *, tile: int | None = None,
                overlap: float = DEFAULT_OVERLAP) -> TiledCheck:
    """A check of `frame` by `detector`, nothing run yet. `tile` defaults to the model's input
    size (native resolution inside each tile)."""
    return TiledCheck(detector.detect, frame, size=tile or max(detector.input_size),
                      iou_threshold=detector.iou_threshold, max_detections=detector.max_detections,
                      overlap=overlap)


def detect_tiled(
    detector: Detector,
    frame: np.ndarray,
    *,
    tile: int | None = None,
    overlap: float = DEFAULT_OVERLAP,
) -> Detections:
    """Detections of one frame from the tiles of each pyramid level and the whole frame, in the
    frame's pixels, in one go (see TiledCheck)."""
    check = tiled_check(detector, frame, tile=tile, overlap=overlap)
    check.run()
    return check.result
