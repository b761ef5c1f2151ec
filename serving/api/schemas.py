"""Request and response bodies published in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SAFE_ID = r"^[A-Za-z0-9._:-]{1,128}$"


def _no_nul(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL; refuse it at the edge rather than fail in the database.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class Detection(BaseModel):
    class_id: int
    class_name: str
    score: float
    box: list[float]


class DetectResponse(BaseModel):
    width: int
    height: int
    model_version: str
    detections: list[Detection]


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["confirm", "correct", "reject"]
    violation: str | None = Field(None, max_length=64, description="for `correct`: the right violation id")
    note: str = Field("", max_length=2000)

    _clean = field_validator("violation", "note")(_no_nul)


class StatusCallback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["dispatched", "handled", "closed"]
    external_id: str = Field("", max_length=128)
    note: str = Field("", max_length=2000)

    _clean = field_validator("external_id", "note")(_no_nul)


class LocationIn(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    address: str = Field("", max_length=256)

    _clean = field_validator("address")(_no_nul)


class EventIn(BaseModel):
    """A ViolationEvent pushed by a remote `gridwatch watch` (edge box)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    type: Literal["opened", "updated", "closed"]
    event_id: str = Field(pattern=SAFE_ID)
    camera: str = Field(pattern=SAFE_ID)
    violation: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    matter_code: str = Field(pattern=r"^[0-9]{11}$")
    grid: str = Field(pattern=r"^[0-9A-Za-z]{15}$")
    zone: str = Field("", max_length=128)
    zone_type: str = Field("", max_length=64)
    first_seen: datetime
    last_seen: datetime
    dwell_s: float = Field(0.0, ge=0, le=10**8)
    track_id: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    score: float = Field(ge=0, le=1)
    best_score: float = Field(0.0, ge=0, le=1)
    needs_review: bool = False
    legacy_code: str | None = Field(None, pattern=r"^[0-9]{4}$")
    division: str = Field("", pattern=r"^([0-9]{6})?$")
    box: tuple[float, float, float, float] | None = None
    location: LocationIn = LocationIn()
    source: Literal["detector", "scene_change"] = "detector"

    _clean = field_validator("zone", "zone_type")(_no_nul)


class EventResult(BaseModel):
    case_number: str
    action: str
    queued: str | None = None


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: Literal["camera", "reviewer", "case_system", "admin"]

    _clean = field_validator("name")(_no_nul)


class KeyCreated(BaseModel):
    id: int
    name: str
    role: str
    key: str = Field(description="shown once; only its hash is stored")


class CasePage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None
