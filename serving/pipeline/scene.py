"""Scene change: what moved since the last detection, and what is new and stays.

`MotionGate` (Frigate-style): a small blurred grey thumbnail compared with the one taken at
the camera's last detection. No change: the detector can be skipped and the tracks carried
over; the static re-check interval still forces a detection now and then.

`SceneWatcher` (abandoned-object style) finds what the model cannot name yet: per watched
zone (those of the camera's scene-change rules, e.g. roadway or wall) it keeps a reference
background and reports regions that differ from it and persist, as boxes of the pseudo-class
`new_object`. They go through the same tracker and rules as detections, so dwell, schedule,
grace and one-event-per-instance apply; their events always need review. A rule with
`after_classes: [truck]` turns a patch on the roadway into a *spillage candidate* only if a
truck passed shortly before; a patch on a wall is a *new posting candidate*.

Pixels under any detected box (a person or a parked car is not a new patch) are excluded
and never learnt into the background; the background adapts slowly elsewhere (light).
"""

from __future__ import annotations

import cv2
import numpy as np

from detector.detections import Detections
from serving.cameras import Camera
from serving.streams.readers import Frame
from serving.pipeline.zones import ZoneMap

SCENE_CLASS_ID = -1


def _thumb(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return cv2.GaussianBlur(grey, (5, 5), 0)


class MotionGate:
    def __init__(self, width: int = 160, pixel_threshold: int = 20, area_fraction: float = 0.002) -> None:
        self.width = width
        self.pixel_threshold = pixel_threshold
        self.area_fraction = area_fraction
        self._reference: np.ndarray | None = None

    def reference(self, image: np.ndarray) -> None:
        self._reference = _thumb(image, self.width)

    def moved(self, image: np.ndarray) -> bool:
        if self._reference is None:
            return True
        thumb = _thumb(image, self.width)
        if thumb.shape != self._reference.shape:
            return True
        changed = cv2.absdiff(thumb, self._reference) > self.pixel_threshold
        return bool(changed.mean() > self.area_fraction)


class SceneWatcher:
    def __init__(
        self,
        zone_types: frozenset[str],
        *,
        width: int = 320,
        pixel_threshold: int = 25,
        min_area_fraction: float = 0.002,
        persist_samples: int = 2,
        learn_rate: float = 0.05,
    ) -> None:
        self.zone_types = zone_types
        self.width = width
        self.pixel_threshold = pixel_threshold
        self.min_area_fraction = min_area_fraction
        self.persist_samples = persist_samples
        self.learn_rate = learn_rate
        self._background: np.ndarray | None = None
        self._persist: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._mask_key: tuple | None = None

    @property
    def pending(self) -> bool:
        """Something new is showing but not yet confirmed: the next frame must be looked at."""
        p = self._persist
        return p is not None and bool(((p > 0) & (p < self.persist_samples)).any())

    @classmethod
    def for_camera(cls, camera: Camera) -> SceneWatcher:
        types = frozenset(t for r in camera.rules if r.scene_change for t in r.zone_types)
        return cls(types)

    def _zone_mask(self, zones: ZoneMap, shape: tuple[int, int]) -> np.ndarray:
        key = (zones.size, shape)
        if self._mask is None or self._mask_key != key:
            mask = np.zeros(shape, np.uint8)
            for zone in zones.zones:
                if zone.type in self.zone_types:
                    mask |= zones.mask(zone, shape)
            self._mask, self._mask_key = mask, key
        return self._mask

    def update(self, frame: Frame, detections: Detections, zones: ZoneMap) -> Detections:
        grey = _thumb(frame.image, self.width)
        h, w = grey.shape
        mask = self._zone_mask(zones, (h, w))
        scale = w / frame.image.shape[1]
        if self._background is None or self._background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            self._persist = np.zeros((h, w), np.uint16)
            return _empty()
        occupied = np.zeros((h, w), np.uint8)
        for x1, y1, x2, y2 in (detections.xyxy * scale).astype(int):
            cv2.rectangle(occupied, (x1 - 2, y1 - 2), (x2 + 2, y2 + 2), 255, -1)
        diff = cv2.absdiff(grey.astype(np.float32), self._background)
        fg = ((diff > self.pixel_threshold) & (mask > 0) & (occupied == 0)).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        assert self._persist is not None
        self._persist = np.where(fg > 0, np.minimum(self._persist + 1, 60000), 0).astype(np.uint16)
        # Learn the background where nothing is (not under boxes, not under a candidate patch).
        learn = (fg == 0) & (occupied == 0)
        cv2.accumulateWeighted(grey.astype(np.float32), self._background, self.learn_rate, learn.astype(np.uint8))
        stable = (self._persist >= self.persist_samples).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(stable, connectivity=8)
        boxes, scores = [], []
        min_area = self.min_area_fraction * h * w
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if area < min_area:
                continue
            boxes.append([x / scale, y / scale, (x + bw) / scale, (y + bh) / scale])
            mean_diff = float(diff[y : y + bh, x : x + bw][stable[y : y + bh, x : x + bw] > 0].mean())
            scores.append(min(1.0, mean_diff / 60.0))  # how different it is, 0..1
        if not boxes:
            return _empty()
        return Detections(
            xyxy=np.asarray(boxes, np.float32),
            scores=np.asarray(scores, np.float32),
            class_ids=np.full(len(boxes), SCENE_CLASS_ID, np.int64),
            names={SCENE_CLASS_ID: "new_object"},
        )


def _empty() -> Detections:
    return Detections.empty({SCENE_CLASS_ID: "new_object"})
