"""Tiled inference: small things at full resolution.

A flyer or a window ad is a few dozen pixels in a 1080p frame; shrunk to the model's
448 px input it is a handful, below what the model can see. Slicing the frame into
overlapping tiles of the model's own input size runs each part at native resolution
(as SAHI does); the whole frame runs too, so large things are still seen whole. All
slices go through one session in batches.

Merging: a box that touches a tile's inner border is a cut piece of something larger
and is dropped; anything smaller than the overlap lies whole inside some tile, and
anything larger is seen by the whole-frame pass. What remains is de-duplicated by the
detector's own class-aware NMS. (Merging pieces into union boxes, as SAHI's NMM does,
snowballs across low-score boxes at evaluation thresholds.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from detector.boxes import nms
from detector.detections import Detections

if TYPE_CHECKING:
    from detector.runtime import Detector

DEFAULT_OVERLAP = 0.2
EDGE_MARGIN = 2.0  # pixels: a box this close to a tile's inner border was cut by it


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


def detect_tiled(
    detector: Detector,
    frame: np.ndarray,
    *,
    tile: int | None = None,
    overlap: float = DEFAULT_OVERLAP,
) -> Detections:
    """Detections of one frame from its tiles and the whole frame, in the frame's pixels.
    `tile` defaults to the model's input size (native resolution inside each tile)."""
    h, w = frame.shape[:2]
    tiles = tile_grid(w, h, tile or max(detector.input_size), overlap)
    if len(tiles) == 1:
        return detector.detect([frame])[0]
    # Slices are views: no copy of the frame until the letterbox writes the model input.
    *per_tile, whole = detector.detect([frame[t.y0:t.y1, t.x0:t.x1] for t in tiles] + [frame])
    pieces = [whole]
    for t, found in zip(tiles, per_tile):
        kept = found[uncut(found, t, w, h)]
        pieces.append(Detections(xyxy=kept.xyxy + np.array([t.x0, t.y0, t.x0, t.y0], np.float32),
                                 scores=kept.scores, class_ids=kept.class_ids, names=kept.names))
    return merge(pieces, detector.iou_threshold, detector.max_detections, max(w, h))
