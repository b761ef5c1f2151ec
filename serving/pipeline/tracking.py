"""Tracking for street violations: an IoU / ground-point tracker built for static things.

Why not ByteTrack (supervision's `sv.ByteTrack`)? Its Kalman motion model and its
`lost_track_buffer` (counted in frames, tuned for ~25-30 fps) assume objects that move a
little every frame. Here frames are analysed every few seconds, and what matters (bins,
piles, stalls, parked carts) barely moves at all, but detection of it flickers: a pile may be
missed for several samples in a row when a bus covers it. So association is plain geometry
with a long memory measured in seconds, not frames:

- same class only; greedy best-first on IoU (>= `iou_threshold`), then, for boxes left over,
  on the distance between ground points (bottom-centres) relative to the box size, so a cart
  that moved half its width between two samples keeps its id;
- a track survives `max_age_s` seconds unseen (the event layer's grace period), then ends.

Tracks keep their score history so the rules can apply Frigate's median-score filter.

A class never changes within a track, so when the model calls the same object by another
class, a new track starts where the old one was last seen. Each update lists those places
as `ClassFlip`s (the model is unsure what the object is: a frame worth labelling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from detector.boxes import box_iou
from detector.detections import Detections


@dataclass
class Track:
    id: int
    class_name: str
    box: np.ndarray  # (4,) xyxy, latest
    first_seen: datetime
    last_seen: datetime
    scores: list[float] = field(default_factory=list)

    @property
    def ground_point(self) -> tuple[float, float]:
        return (float(self.box[0] + self.box[2]) / 2, float(self.box[3]))

    @property
    def score(self) -> float:
        return self.scores[-1] if self.scores else 0.0


@dataclass(frozen=True)
class ClassFlip:
    """A new track of one class on the spot where a track of another class was seen at the
    previous update and is missing now."""

    track_id: int  # the new track
    from_class: str
    to_class: str
    box: tuple[float, float, float, float]


@dataclass
class IoUTracker:
    max_age_s: float = 30.0
    iou_threshold: float = 0.3
    max_ground_shift: float = 1.0  # in box diagonals
    max_history: int = 500
    tracks: list[Track] = field(default_factory=list, init=False)
    _next_id: int = field(default=1, init=False)
    _last_update: datetime | None = field(default=None, init=False)
    flips: list[ClassFlip] = field(default_factory=list, init=False)  # of the last update

    def update(self, detections: Detections, when: datetime) -> list[Track]:
        """Associate one frame's detections; returns the tracks seen in this frame."""
        names = detections.class_names
        matched: dict[int, int] = {}  # detection index -> track index
        used_tracks: set[int] = set()
        for cls in sorted(set(names)):
            det_idx = [i for i, n in enumerate(names) if n == cls]
            trk_idx = [j for j, t in enumerate(self.tracks) if t.class_name == cls]
            if not trk_idx:
                continue
            det_boxes = detections.xyxy[det_idx]
            trk_boxes = np.stack([self.tracks[j].box for j in trk_idx]).astype(np.float32)
            iou = box_iou(det_boxes, trk_boxes)
            for a, b in _greedy(iou, self.iou_threshold, larger_is_better=True):
                matched[det_idx[a]] = trk_idx[b]
            left_d = [k for k, i in enumerate(det_idx) if i not in matched]
            left_t = [k for k, j in enumerate(trk_idx) if j not in matched.values()]
            if left_d and left_t:
                shift = _ground_shift(det_boxes[left_d], trk_boxes[left_t])
                for a, b in _greedy(shift, self.max_ground_shift, larger_is_better=False):
                    matched[det_idx[left_d[a]]] = trk_idx[left_t[b]]
        seen: list[Track] = []
        new: list[Track] = []
        for i in range(len(detections)):
            box = detections.xyxy[i].astype(np.float32)
            score = float(detections.scores[i])
            j = matched.get(i)
            if j is None:
                track = Track(self._next_id, names[i], box, when, when)
                self._next_id += 1
                self.tracks.append(track)
                new.append(track)
            else:
                track = self.tracks[j]
                track.box = box
                track.last_seen = when
            track.scores.append(score)
            if len(track.scores) > self.max_history:
                del track.scores[: -self.max_history]
            used_tracks.add(track.id)
            seen.append(track)
        self.flips = self._flips(new, used_tracks)
        self.tracks = [
            t for t in self.tracks if t.id in used_tracks or (when - t.last_seen).total_seconds() <= self.max_age_s
        ]
        self._last_update = when
        return seen

    def _flips(self, new: list[Track], used: set[int]) -> list[ClassFlip]:
        gone = [t for t in self.tracks if t.id not in used and t.last_seen == self._last_update]
        if not new or not gone:
            return []
        iou = box_iou(np.stack([t.box for t in new]), np.stack([t.box for t in gone]).astype(np.float32))
        flips = []
        for a, b in _greedy(iou, self.iou_threshold, larger_is_better=True):
            if new[a].class_name != gone[b].class_name:
                box = tuple(float(v) for v in new[a].box)
                flips.append(ClassFlip(new[a].id, gone[b].class_name, new[a].class_name, box))  # type: ignore[arg-type]
        return flips

    def touch(self, when: datetime) -> list[Track]:
        """No detection ran (no motion since the last one): what was seen then is still there.

        Tracks already missing at the last detection keep ageing."""
        present = [t for t in self.tracks if t.last_seen == self._last_update]
        self.flips = []
        for track in present:
            track.last_seen = when
        self._last_update = when
        return present


def _greedy(cost: np.ndarray, limit: float, *, larger_is_better: bool) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    if cost.size == 0:
        return pairs
    order = np.argsort(-cost if larger_is_better else cost, axis=None, kind="stable")
    rows: set[int] = set()
    cols: set[int] = set()
    for flat in order:
        r, c = divmod(int(flat), cost.shape[1])
        value = cost[r, c]
        if (value < limit) if larger_is_better else (value > limit):
            break
        if r in rows or c in cols:
            continue
        rows.add(r)
        cols.add(c)
        pairs.append((r, c))
    return pairs


def _ground_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,4) x (M,4) -> ground-point distance in units of the larger box diagonal."""
    pa = np.stack([(a[:, 0] + a[:, 2]) / 2, a[:, 3]], axis=1)
    pb = np.stack([(b[:, 0] + b[:, 2]) / 2, b[:, 3]], axis=1)
    dist = np.linalg.norm(pa[:, None] - pb[None], axis=2)
    da = np.hypot(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1])
    db = np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    return dist / (np.maximum(da[:, None], db[None]) + 1e-6)
