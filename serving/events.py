"""ViolationEvent: what the stream stage hands to the case stage.

One event per violation instance and transition (opened, updated, closed), never one
per frame. Plain data: the case layer needs nothing else from the stream layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

EventType = Literal["opened", "updated", "closed"]


@dataclass(frozen=True)
class Location:
    lat: float | None = None
    lon: float | None = None
    address: str = ""


@dataclass(frozen=True)
class ViolationEvent:
    type: EventType
    event_id: str  # stable for the violation instance across its transitions
    camera: str
    violation: str  # taxonomy id, e.g. "bin_overflow"
    matter_code: str  # 11 digits: 6-digit division + 5-digit class
    grid: str  # 15-char unit grid
    zone: str
    first_seen: datetime  # timezone-aware
    last_seen: datetime
    dwell_s: float
    track_id: int | None
    score: float  # median score over the track: what the rule thresholded
    needs_review: bool
    evidence: tuple[str, ...] = ()  # paths: original frame (unaltered), crop, annotated copy
    legacy_code: str | None = None
    zone_type: str = ""
    division: str = ""
    best_score: float = 0.0
    box: tuple[float, float, float, float] | None = None  # in the evidence frame's pixels
    location: Location = field(default_factory=Location)
    source: Literal["detector", "scene_change"] = "detector"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_seen"] = self.first_seen.isoformat()
        data["last_seen"] = self.last_seen.isoformat()
        data["evidence"] = list(self.evidence)
        data["box"] = list(self.box) if self.box is not None else None
        data["dwell_s"] = round(self.dwell_s, 3)
        data["score"] = round(self.score, 4)
        data["best_score"] = round(self.best_score, 4)
        return data
