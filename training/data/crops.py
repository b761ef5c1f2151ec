"""Native-resolution crops: train the small classes at the scale tiled inference shows them.

A window ad in a 768 px facade photo, trained at 416 px on the whole image, is seen at half
its size; at inference the static checks cut the full frame into tiles of the model's input
size (detector/tiling.py) and show it at full size. Training only on whole images teaches the
model one scale and asks it for another. So, for train images holding small printed things
(signs, window ads, flyers, banners), the build also writes a few tiles of the original
image, cut on the same grid the detector uses, with their labels clipped to the tile.

A box cut by the tile border keeps its visible part when at least MIN_VISIBLE of it is
inside (a sign half in view is still a sign); a smaller piece is dropped rather than taught
as a whole object. Crops go to the train split only, beside their source image, so a val
image never has a crop in train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.tiling import Tile, tile_grid

SMALL_CLASSES = frozenset(["shop_sign", "window_ad", "flyer", "banner"])
MIN_VISIBLE = 0.5  # of a box's area inside the tile, to keep its clipped part
DEFAULT_MAX_CROPS = 2  # per image: the tiles holding the most small boxes


@dataclass(frozen=True)
class Crop:
    tile: Tile
    boxes: np.ndarray  # (N, 4) in crop pixels
    classes: list[str]
    small_boxes: int  # whole small-class boxes inside: what this crop is for


def visible_fraction(boxes: np.ndarray, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Each box clipped to the tile (frame pixels) and the fraction of its area that is inside."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(tile.x0, tile.x1)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(tile.y0, tile.y1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped, np.where(area > 0, inside / np.maximum(area, 1e-9), 0.0)


def native_crops(width: int, height: int, boxes: np.ndarray, classes: Sequence[str], tile: int,
                 max_crops: int = DEFAULT_MAX_CROPS) -> list[Crop]:
    """Up to `max_crops` tiles of a (width x height) image that hold whole small-class boxes,
    most such boxes first; none when the image fits in one tile (it trains at native size)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    small = np.array([c in SMALL_CLASSES for c in classes], bool)
    if max(width, height) <= tile or not small.any():
        return []
    crops = []
    for t in tile_grid(width, height, tile):
        clipped, visible = visible_fraction(boxes, t)
        whole_small = int(((visible >= 0.999) & small).sum())
        if whole_small == 0:
            continue
        keep = visible >= MIN_VISIBLE
        local = clipped[keep] - np.array([t.x0, t.y0, t.x0, t.y0], np.float64)
        crops.append(Crop(t, local, [c for c, k in zip(classes, keep) if k], whole_small))
    crops.sort(key=lambda c: (-c.small_boxes, c.tile.y0, c.tile.x0))
    return crops[:max_crops]
