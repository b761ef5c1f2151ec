"""Zone membership: which configured polygons an object's ground point stands in.

Zones are tested on the box's bottom-centre (where the object touches the ground), as in
supervision's PolygonZone and Frigate: a bin whose top leans over the kerb still stands
on the sidewalk.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from serving.cameras import Zone


@dataclass(frozen=True)
class PixelZone:
    name: str
    type: str
    polygon: np.ndarray  # (K, 2) float32, pixels

    def contains(self, point: tuple[float, float]) -> bool:
        # >= 0: on the edge counts as inside (a box touching the frame's bottom row).
        return cv2.pointPolygonTest(self.polygon, (float(point[0]), float(point[1])), False) >= 0


class ZoneMap:
    """A camera's zones scaled to one frame size (built once per size, not per frame)."""

    def __init__(self, zones: tuple[Zone, ...] | list[Zone], width: int, height: int) -> None:
        self.size = (width, height)
        self.zones = [
            PixelZone(z.name, z.type, (np.asarray(z.polygon, np.float32) * [width, height]).astype(np.float32))
            for z in zones
        ]

    def containing(self, point: tuple[float, float]) -> list[PixelZone]:
        return [z for z in self.zones if z.contains(point)]

    def mask(self, zone: PixelZone, shape: tuple[int, int]) -> np.ndarray:
        """Binary mask (uint8 0/255) of `zone` at `shape` (h, w), scaled from this map's size."""
        h, w = shape
        scale = np.array([w / self.size[0], h / self.size[1]], np.float32)
        out = np.zeros((h, w), np.uint8)
        cv2.fillPoly(out, [np.round(zone.polygon * scale).astype(np.int32)], 255)
        return out
