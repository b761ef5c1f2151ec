"""Rules: tracks in zones become violation instances, with dwell, score and schedule checks.

A *candidate* is one (track, rule) pair, in one zone (the first by the rule's zone_types). It opens an event when, inside the camera's
schedule, it has stayed `dwell` seconds since first seen in the zone and the median of its
scores (Frigate's filter: one lucky frame does not make a violation) reaches `min_score`.
While open it is re-sent ("updated") when its best evidence improves or every
`update_every` seconds, and it closes once unseen in the zone for the grace period. One
violation instance is therefore one event_id from opening to closing, never one per frame.

This module decides; it does no I/O. The pipeline writes evidence and builds the
`ViolationEvent` from a `Transition`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

import numpy as np

from detector.boxes import part_of
from detector.detections import Detections
from detector.second_stage import OPEN, UNSURE, CropLabel
from detector.taxonomy import Taxonomy, Violation
from serving.cameras import Camera, Rule
from serving.pipeline.tracking import Track
from serving.pipeline.zones import PixelZone, ZoneMap

log = logging.getLogger(__name__)

SCENE_CLASS = "new_object"  # the class scene-change blobs carry through the tracker
EVIDENCE_GAIN = 0.05  # a new best frame must beat the last one written by this much
# A vehicle must be this sure before what lies inside its box counts as its part (`not_part_of`):
# a real overflowing bin in front of a parked truck the model gives 0.38 stays a bin (measured on
# the real val split: scripts/road_checks.py).
WHOLE_MIN_SCORE = 0.5
# (camera, violation) -> the alert score fitted to that pair's reviews, or None: the rule's own.
AlertThreshold = Callable[[str, str], "float | None"]


@dataclass(frozen=True)
class ActiveRule:
    """A camera's rule with the taxonomy's defaults filled in."""

    violation: Violation
    zone_types: frozenset[str]
    zone_type_order: tuple[str, ...]
    classes: frozenset[str]
    min_score: float
    dwell: float
    scene_change: bool
    after_classes: frozenset[str]
    after_within: float
    auto_confirm_score: float | None
    # The violation's second stage (taxonomy `second_stage`) is not trained for this city: the
    # detector class alone cannot decide it, so every case of this rule goes to a reviewer.
    stage_missing: bool = False
    # Trained: its label on the tracks' crops decides; only `open` files, `cannot_tell` (or no
    # label yet) goes to review, a covered load is not filed (detector.second_stage).
    stage_trained: bool = False
    # Detector classes whose boxes this rule's objects are never a part of (taxonomy `not_part_of`).
    not_part_of: frozenset[str] = frozenset()

    @classmethod
    def resolve(cls, rule: Rule, taxonomy: Taxonomy, stages: Collection[str] = ()) -> ActiveRule:
        violation = taxonomy[rule.violation]
        classes = (SCENE_CLASS,) if rule.scene_change else rule.classes or violation.detector_classes
        return cls(
            violation=violation,
            zone_types=frozenset(rule.zone_types),
            zone_type_order=tuple(rule.zone_types),
            classes=frozenset(classes),
            min_score=violation.min_score if rule.min_score is None else rule.min_score,
            dwell=violation.dwell_s if rule.dwell is None else rule.dwell,
            scene_change=rule.scene_change,
            after_classes=frozenset(rule.after_classes),
            after_within=rule.after_within,
            auto_confirm_score=rule.auto_confirm_score,
            stage_missing=violation.second_stage is not None and violation.second_stage not in stages,
            stage_trained=violation.second_stage is not None and violation.second_stage in stages,
            not_part_of=frozenset(violation.not_part_of),
        )


@dataclass
class Candidate:
    track_id: int
    rule: ActiveRule
    zone: PixelZone
    first_seen: datetime
    last_seen: datetime
    scores: list[float] = field(default_factory=list)
    eligible: bool = True  # False: a spillage patch with no truck before it
    event_id: str | None = None
    last_sent: datetime | None = None
    # Best evidence: the frame (kept by reference, one per candidate) and box at the best score.
    best_score: float = -1.0
    best_box: np.ndarray | None = None
    best_frame: np.ndarray | None = None
    best_detections: Detections | None = None  # all the model found in best_frame
    best_at: datetime | None = None
    # The latest sighting's frame (by reference, like the best): the event's timeline frame
    # for an update or a closing that brought no better one.
    last_box: np.ndarray | None = None
    last_frame: np.ndarray | None = None
    last_detections: Detections | None = None
    last_at: datetime | None = None
    written_score: float = -1.0  # best score whose evidence was already written
    evidence: tuple[str, ...] = ()  # paths of the best evidence written so far
    grid: str | None = None  # set by the pipeline when the event opens
    # The second stage's labels on this track's crops, one vote per detected frame: label -> scores.
    stage_votes: dict[str, list[float]] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.event_id is not None

    @property
    def dwell_s(self) -> float:
        return (self.last_seen - self.first_seen).total_seconds()

    @property
    def median_score(self) -> float:
        return float(np.median(self.scores)) if self.scores else 0.0

    @property
    def stage_label(self) -> CropLabel | None:
        """The second stage's verdict: the label most frames gave (as the median score, one
        odd crop does not decide), ties to the surer; its score is that label's mean."""
        if not self.stage_votes:
            return None
        label, scores = max(self.stage_votes.items(), key=lambda kv: (len(kv[1]), float(np.mean(kv[1]))))
        return CropLabel(label, float(np.mean(scores)))

    @property
    def covered(self) -> bool:
        """The trained stage says the load is covered (mesh, tarp, ...): not a violation."""
        label = self.stage_label
        return self.rule.stage_trained and label is not None and label.label not in (OPEN, UNSURE)

    @property
    def needs_review(self) -> bool:
        if self.rule.scene_change or self.rule.stage_missing:
            return True
        if self.rule.stage_trained and (self.stage_label is None or self.stage_label.label != OPEN):
            return True  # cannot tell (or never labelled): a person decides
        # A rule's own bar is optional: without one, whether the case goes out unreviewed is
        # the case stage's call (settings.auto_confirm), so one setting is enough.
        threshold = self.rule.auto_confirm_score
        return threshold is not None and self.median_score < threshold


@dataclass(frozen=True)
class Transition:
    type: Literal["opened", "updated", "closed"]
    candidate: Candidate
    new_evidence: bool  # the candidate's best frame has not been written yet


class RuleEngine:
    """One camera's rules over its tracks."""

    def __init__(self, camera: Camera, taxonomy: Taxonomy, alert_threshold: AlertThreshold | None = None,
                 stages: Collection[str] = ()) -> None:
        """`alert_threshold`: learned scores (serving/cases/thresholds.py) that replace a
        rule's `min_score` for this camera once its reviews have moved them. `stages`: the
        second stages (detector.second_stage) trained for this city, by name."""
        self.camera = camera
        self.alert_threshold = alert_threshold
        self.rules = [ActiveRule.resolve(r, taxonomy, stages) for r in camera.rules]
        for rule in self.rules:
            if rule.stage_missing:
                # Said once at start, so nobody reads a flood of truck cases as the model's verdict.
                log.warning("camera %s, rule %s: its %s stage is not trained for this city, so the detector "
                            "cannot tell a violation from a %s; every case goes to review", camera.id,
                            rule.violation.id, rule.violation.second_stage, "/".join(sorted(rule.classes)))
        self.candidates: dict[tuple[int, int], Candidate] = {}
        self.class_last_seen: dict[str, datetime] = {}
        self.watched_classes = frozenset(c for r in self.rules for c in r.classes | r.after_classes)
        # Of the last update: candidates that stayed long enough, in schedule, and were held
        # back only by their median score (what active learning samples as "dropped_for_score").
        self.dropped_for_score: list[Candidate] = []
        # Of the last update: zone types where a scene-change candidate was seen (active learning
        # asks first for frames where the wall's fired: "wall_scene_change").
        self.scene_zone_types: frozenset[str] = frozenset()
        # Of the last update: violation-class tracks not counted because their box lay inside a
        # vehicle (taxonomy `not_part_of`): the model read part of a truck as a bin or an ad, which
        # active learning samples as "vehicle_part".
        self.vehicle_parts = 0
        self.whole_classes = frozenset(c for r in self.rules for c in r.not_part_of)
        # Trained second stage -> the track classes whose crops it is asked about (the runner
        # classifies only those: the load decision on trucks, never on a person or a bin).
        self.stage_classes: dict[str, frozenset[str]] = {}
        for rule in self.rules:
            if rule.stage_trained:
                name = rule.violation.second_stage
                self.stage_classes[name] = self.stage_classes.get(name, frozenset()) | rule.classes
        # Detector class -> the lowest `min_score` a rule applies to it.
        self.score_thresholds: dict[str, float] = {}
        for rule in self.rules:
            for cls in () if rule.scene_change else rule.classes:
                self.score_thresholds[cls] = min(self.score_thresholds.get(cls, 1.0), rule.min_score)

    def update(
        self,
        tracks: list[Track],
        zones: ZoneMap,
        when: datetime,
        frame: np.ndarray | None = None,
        detected: bool = True,
        detections: Detections | None = None,
        crop_labels: Mapping[str, Mapping[int, CropLabel]] | None = None,
    ) -> list[Transition]:
        """Feed the tracks seen at `when`; `detected` False: carried over without a detection.
        `detections`: everything the model found in `frame`, kept with a best frame because
        a fully labelled frame is what training needs later. `crop_labels`: second stage name ->
        track id -> its label on this frame's crop (see `stage_classes`)."""
        for track in tracks:
            if track.class_name in self.watched_classes:
                self.class_last_seen[track.class_name] = when
        wholes = self._wholes(detections) if detected else {}
        self.vehicle_parts = 0
        for track in tracks:
            inside = zones.containing(track.ground_point)
            for r, rule in enumerate(self.rules):
                if track.class_name not in rule.classes:
                    continue
                if any(part_of(track.box, wholes[c]) for c in rule.not_part_of if c in wholes):
                    self.vehicle_parts += 1
                    continue
                zone = self._zone_for(track.id, r, rule, inside)
                if zone is not None:
                    self._observe(track, r, rule, zone, when, frame if detected else None, detected, detections)
                    if detected and rule.stage_trained and crop_labels:
                        label = crop_labels.get(rule.violation.second_stage, {}).get(track.id)
                        if label is not None:
                            votes = self.candidates[(track.id, r)].stage_votes.setdefault(label.label, [])
                            votes.append(label.score)
                            del votes[:-500]
        return self._transitions(when)

    def _wholes(self, detections: Detections | None) -> dict[str, np.ndarray]:
        """The boxes of this frame's objects that a rule's objects can be parts of, by class."""
        if detections is None or not self.whole_classes:
            return {}
        names, sure = np.array(detections.class_names, dtype=object), detections.scores >= WHOLE_MIN_SCORE
        found = {c: detections.xyxy[(names == c) & sure] for c in self.whole_classes}
        return {c: boxes for c, boxes in found.items() if len(boxes)}

    def _zone_for(self, track_id: int, r: int, rule: ActiveRule, inside: list[PixelZone]) -> PixelZone | None:
        """One zone per (track, rule): overlapping zones must not double an event.

        The zone of an existing candidate if the track is still in it, else the first zone
        whose type comes first in the rule's zone_types."""
        current = self.candidates.get((track_id, r))
        if current is not None:
            return current.zone if any(z.name == current.zone.name for z in inside) else None
        ranked = [z for t in rule.zone_type_order for z in inside if z.type == t]
        return ranked[0] if ranked else None

    def _observe(
        self, track: Track, r: int, rule: ActiveRule, zone: PixelZone, when: datetime,
        frame: np.ndarray | None, detected: bool, detections: Detections | None,
    ) -> None:
        key = (track.id, r)
        cand = self.candidates.get(key)
        if cand is None:
            cand = Candidate(track.id, rule, zone, first_seen=when, last_seen=when)
            if rule.after_classes:
                # e.g. spillage: a truck must have passed shortly before the patch appeared
                since = track.first_seen - timedelta(seconds=rule.after_within)
                cand.eligible = any(
                    (seen := self.class_last_seen.get(c)) is not None and seen >= since
                    for c in rule.after_classes
                )
            self.candidates[key] = cand
        cand.last_seen = when
        if detected:
            cand.scores.append(track.score)
            if len(cand.scores) > 500:
                del cand.scores[:-500]
            if frame is not None and track.score > cand.best_score:
                cand.best_score = track.score
                cand.best_box = track.box.copy()
                cand.best_frame = frame
                cand.best_detections = detections
                cand.best_at = when
            if frame is not None:
                cand.last_box, cand.last_frame, cand.last_detections, cand.last_at = \
                    track.box.copy(), frame, detections, when

    def _transitions(self, when: datetime) -> list[Transition]:
        out: list[Transition] = []
        self.dropped_for_score = []
        self.scene_zone_types = frozenset(c.zone.type for c in self.candidates.values()
                                          if c.rule.scene_change and c.last_seen == when)
        grace = self.camera.grace_s
        for key, cand in list(self.candidates.items()):
            if (when - cand.last_seen).total_seconds() > grace:
                if cand.is_open:
                    out.append(Transition("closed", cand, new_evidence=False))
                del self.candidates[key]
                continue
            if cand.last_seen != when:
                continue  # not seen this time: waiting out the grace period
            if not cand.is_open:
                if (
                    cand.eligible
                    and not cand.covered
                    and cand.dwell_s >= cand.rule.dwell
                    and cand.median_score >= self.min_score(cand.rule)
                    and cand.best_frame is not None
                    and self.camera.in_schedule(when)
                ):
                    cand.event_id = self._event_id(cand)
                    cand.last_sent = when
                    cand.written_score = cand.best_score
                    out.append(Transition("opened", cand, new_evidence=True))
                elif (cand.eligible and not cand.rule.scene_change and cand.dwell_s >= cand.rule.dwell
                      and cand.median_score < cand.rule.min_score and self.camera.in_schedule(when)):
                    self.dropped_for_score.append(cand)
                continue
            better = cand.best_score >= cand.written_score + EVIDENCE_GAIN
            due = cand.last_sent is not None and (when - cand.last_sent).total_seconds() >= self.camera.update_every
            if better or due:
                cand.last_sent = when
                if better:
                    cand.written_score = cand.best_score
                out.append(Transition("updated", cand, new_evidence=better))
        return out

    def min_score(self, rule: ActiveRule) -> float:
        if self.alert_threshold is None or rule.scene_change:
            return rule.min_score
        learned = self.alert_threshold(self.camera.id, rule.violation.id)
        return rule.min_score if learned is None else learned

    def close_all(self) -> list[Transition]:
        """End of a file: everything still open closes at its last sighting."""
        out = [Transition("closed", c, new_evidence=False) for c in self.candidates.values() if c.is_open]
        self.candidates.clear()
        return out

    def _event_id(self, cand: Candidate) -> str:
        stamp = cand.first_seen.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.camera.id}-{stamp}-{cand.rule.violation.id}-{cand.zone.name}-t{cand.track_id}"

