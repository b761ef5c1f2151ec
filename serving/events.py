"""ViolationEvent: the one record the stream stage hands to the case stage.

One event per violation instance and transition (opened, updated, closed), never one per
frame. The pipeline emits it, `gridwatch watch` writes it as a JSON line, `POST /v1/events`
accepts that line from an edge box, and case matching reads it: one typed model, so the
field names of the event-line contract are defined here and nowhere else. The evidence
frame travels beside the event (an `EvidenceFrame`), never inside its JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

EventType = Literal["opened", "updated", "closed"]
SAFE_ID = r"^[A-Za-z0-9._:-]{1,128}$"
# One camera id pattern for configs, events, API paths and filters: what fits the database
# column and a URL path segment, starting with a letter or digit so "." and ".." never pass.
CAMERA_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# 15-character unit grid: 6-digit division, then street, community and grid (upper case).
GRID_PATTERN = r"^[0-9A-Z]{15}$"


def no_nul(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; refuse it at the edge rather than fail in the database.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def division_problem(division: str, grid: str | None, matter_code: str | None = None) -> str | None:
    """Why these codes contradict each other, or None: a unit grid and a matter code both
    begin with the 6-digit administrative division they belong to."""
    if grid is not None and not grid.startswith(division):
        return f"grid {grid} is not in division {division} (a grid starts with its division)"
    if matter_code is not None and not matter_code.startswith(division):
        return f"matter_code {matter_code} is not in division {division} (it starts with its division)"
    return None


def rounded(digits: int) -> PlainSerializer:
    return PlainSerializer(lambda v: round(v, digits), return_type=float, when_used="json")


# ISO-8601 with the offset spelt out (+00:00), as the event lines have always had it.
IsoTime = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str, when_used="json")]


class Location(BaseModel):
    """Where a camera stands: in its config, on each event, on each case."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    address: str = Field("", max_length=256)  # case systems take <= 256 chars

    _clean = field_validator("address")(no_nul)


class ViolationEvent(BaseModel):
    # extra="ignore": an edge box may send fields a newer version added.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    type: EventType
    event_id: str = Field(pattern=SAFE_ID)  # stable for the violation instance across its transitions
    camera: str = Field(pattern=CAMERA_ID)
    violation: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")  # taxonomy id, e.g. "bin_overflow"
    matter_code: str = Field(pattern=r"^[0-9]{11}$")  # 6-digit division + 5-digit class
    grid: str = Field(pattern=GRID_PATTERN)  # unit grid
    zone: str = Field("", max_length=128)
    first_seen: IsoTime  # timezone-aware: a naive time or a bare number is refused
    last_seen: IsoTime
    dwell_s: Annotated[float, Field(ge=0, le=10**8), rounded(3)] = 0.0
    track_id: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    score: Annotated[float, Field(ge=0, le=1), rounded(4)]  # median score over the track: what the rule thresholded
    needs_review: bool = False
    # Where `gridwatch watch` wrote the evidence files (original, crop, annotated); the
    # service takes the frame itself and never reads these paths.
    evidence: tuple[str, ...] = ()
    legacy_code: str | None = Field(None, pattern=r"^[0-9]{4}$")
    zone_type: str = Field("", max_length=64)
    division: str = Field("", pattern=r"^([0-9]{6})?$")
    best_score: Annotated[float, Field(ge=0, le=1), rounded(4)] = 0.0
    box: tuple[float, float, float, float] | None = None  # in the evidence frame's pixels
    location: Location = Location()
    source: Literal["detector", "scene_change"] = "detector"
    model_version: str = Field("", max_length=64)  # the model that saw it ("" from older edge boxes)
    # The violation's second stage on the object's crop (detector.second_stage), e.g. the load
    # decision on a truck: "open", "mesh", "tarp", "covered" or "cannot_tell"; None without one.
    stage_label: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    stage_score: Annotated[float, Field(ge=0, le=1), rounded(4)] | None = None

    _clean = field_validator("zone", "zone_type")(no_nul)

    @field_validator("first_seen", "last_seen", mode="before")
    @classmethod
    def _iso_time(cls, value: object) -> object:
        # A bare number would be read as Unix seconds (or milliseconds): ambiguous, refused.
        if not isinstance(value, (str, datetime)):
            raise ValueError("must be an ISO-8601 time with an offset, e.g. 2026-05-01T08:00:00+08:00")
        return value

    @field_validator("first_seen", "last_seen")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:  # as camera configs: a time without an offset is a guess
            raise ValueError("needs a time zone offset, e.g. 2026-05-01T08:00:00+08:00")
        return value

    @field_validator("box")
    @classmethod
    def _proper_box(cls, value: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        # A degenerate box cannot place the violation; the case then matches by zone alone.
        return value if value is not None and value[0] < value[2] and value[1] < value[3] else None

    def to_json(self) -> dict:
        """The event-line contract as a JSON-ready dict. The second stage's fields appear only
        when a stage labelled the object: a line without one stays as it always was."""
        line = self.model_dump(mode="json")
        if self.stage_label is None:
            line.pop("stage_label")
            line.pop("stage_score")
        return line
