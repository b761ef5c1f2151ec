"""Active learning: which analysed frames go to the labelling queue, and why. No I/O of its
own: the frame goes to the pipeline's `on_sample`, the spent budget comes from `spent`.

A frame is *unsure* when, for a class a rule of its camera watches:

- `score_band`: the class's top score in the frame lies within `band` of the rule's
  `min_score` (the model could have gone either way);
- `class_flip`: a track's object is called by another class than at the last detection
  (the tracker's `ClassFlip`);
- `dropped_for_score`: the rules held a candidate back only for its median score (it stayed
  long enough, in schedule);
- `vehicle_part`: a violation-class box lay inside a truck or bus, so the rules did not count
  it (taxonomy `not_part_of`): the model took part of a vehicle for a bin or an ad, the
  confusion road cameras show most;
- `wall_scene_change`: a scene-change rule watching a wall has a candidate in the frame (a new
  patch on a facade: a flyer or banner the model cannot name yet). Flyers and banners have no
  real labelled image at all, so these frames are what a labeller is asked for first
  (serving/labelling/queue.py `claim_next`).

Unsure frames are taken within a per-camera budget per local day (`daily_budget_per_camera`),
at least `min_gap_s` of camera time apart, so one long unsure scene does not spend the day's
budget in its first minutes. Counts already spent (the queue's rows after a restart) come
from `spent(camera, day)`, asked once per camera and day.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from detector.detections import Detections
from serving.pipeline.tracking import ClassFlip

Reason = Literal["score_band", "class_flip", "dropped_for_score", "vehicle_part", "wall_scene_change"]
FIRST_ASKED: Reason = "wall_scene_change"  # the labelling queue hands these frames out before the rest
WALL = "wall"  # the zone type of facades, where flyers and banners are posted


@dataclass(frozen=True)
class LabellingSample:
    """One frame for the labelling queue: handed beside events, never inside one."""

    camera: str
    taken_at: datetime
    reasons: tuple[Reason, ...]
    image: np.ndarray
    detections: Detections  # all the model found in the frame, as it saw it
    model_version: str


def unsure_reasons(detections: Detections, thresholds: Mapping[str, float], band: float,
                   flips: Iterable[ClassFlip] = (), dropped_for_score: int = 0,
                   scene_zone_types: Collection[str] = (), vehicle_parts: int = 0) -> tuple[Reason, ...]:
    """Why this frame is worth a human's boxes (empty: it is not). `thresholds`: detector
    class -> the `min_score` a rule applies to it; other classes are not the camera's concern.
    `scene_zone_types`: zone types where a scene-change rule has a candidate in this frame."""
    reasons: list[Reason] = []
    top: dict[str, float] = {}
    for name, score in zip(detections.class_names, detections.scores):
        if name in thresholds:
            top[name] = max(top.get(name, 0.0), float(score))
    if any(abs(score - thresholds[name]) <= band for name, score in top.items()):
        reasons.append("score_band")
    if any(f.from_class in thresholds or f.to_class in thresholds for f in flips):
        reasons.append("class_flip")
    if dropped_for_score:
        reasons.append("dropped_for_score")
    if vehicle_parts:
        reasons.append("vehicle_part")
    if WALL in scene_zone_types:
        reasons.append("wall_scene_change")
    return tuple(reasons)


@dataclass
class DailyBudget:
    """At most `per_camera` samples per camera per local day, `min_gap_s` apart."""

    per_camera: int
    tz: ZoneInfo
    min_gap_s: float = 0.0
    spent: Callable[[str, date], int] = lambda camera, day: 0
    _used: dict[tuple[str, date], int] = field(default_factory=dict, init=False)
    _last: dict[str, datetime] = field(default_factory=dict, init=False)
    # A camera change restarts the pipeline: the old one's last frames may overlap the new one's.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def day_of(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    def take(self, camera: str, when: datetime) -> bool:
        """Spend one of the camera's samples at `when`; False when its day's budget is spent
        or its last sample is too recent."""
        with self._lock:
            return self._take(camera, when)

    def _take(self, camera: str, when: datetime) -> bool:
        day = self.day_of(when)
        key = (camera, day)
        if key not in self._used:
            # A new day for this camera: forget older days, ask the store what today cost.
            try:
                spent = self.spent(camera, day)
            except Exception:  # noqa: BLE001 - the store away: no sample now, ask again on the next frame
                return False
            for old in [k for k in self._used if k[0] == camera]:
                del self._used[old]
            self._used[key] = spent
        if self._used[key] >= self.per_camera:
            return False
        last = self._last.get(camera)
        if last is not None and abs((when - last).total_seconds()) < self.min_gap_s:
            return False
        self._used[key] += 1
        self._last[camera] = when
        return True


@dataclass
class UncertaintySampler:
    band: float
    budget: DailyBudget

    def consider(self, camera: str, when: datetime, image: np.ndarray, detections: Detections,
                 thresholds: Mapping[str, float], model_version: str, flips: Iterable[ClassFlip] = (),
                 dropped_for_score: int = 0, scene_zone_types: Collection[str] = (),
                 vehicle_parts: int = 0) -> LabellingSample | None:
        """The frame as a sample when it is unsure and the budget allows, else None."""
        reasons = unsure_reasons(detections, thresholds, self.band, flips, dropped_for_score, scene_zone_types,
                                 vehicle_parts)
        if not reasons or not self.budget.take(camera, when):
            return None
        return LabellingSample(camera=camera, taken_at=when, reasons=reasons, image=image,
                               detections=detections, model_version=model_version)
