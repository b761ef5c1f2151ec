"""Request and response bodies published in the OpenAPI schema."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from serving.auth import key_name_problem
from serving.cases import CasePublic
from serving.cases.review import Decision
from serving.events import no_nul
from serving.live_model import LiveDetector


# The largest row id a database column holds on both SQLite and PostgreSQL (integer): a larger
# one in a path, a query or a body is the caller's error, not a 500 from the driver.
MAX_ID = 2**31 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]


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
    """A reviewer's decision: the body of POST /v1/cases/{case}/review and of the review page's
    decision route alike, so a rejection's reason and a reviewer's boxes reach the export from both."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["confirm", "correct", "reject"]
    violation: str | None = Field(None, max_length=64, description="for `correct`: the right violation id")
    reason: str = Field("", max_length=32, description="with `reject`: why (one of the store's REJECT_REASONS)")
    boxes: list[list[FiniteFloat]] | None = Field(
        None, max_length=50, description="the reviewer's own [x1, y1, x2, y2] boxes in the original frame's pixels; "
                                         "none: the detection's box stands")
    note: str = Field("", max_length=2000)
    load_label: str | None = Field(
        None, max_length=32, description="on a truck load case (muck_truck_uncovered): what the load really was "
                                         "(open, mesh, tarp, covered, cannot_tell); written by `gridwatch review "
                                         "export` for `gridwatch second-stage train`")
    version: int | None = Field(
        None, ge=0, description="the case version (CasePublic.version) the decision was made on; a case that has "
                                "moved on since gets 409. The review page always sends it; optional for API keys "
                                "(then the case must still be pending and not leased to someone else)")

    _clean = field_validator("violation", "reason", "note")(no_nul)

    def decision(self) -> Decision:
        """The one typed decision CaseService.decide takes, from whichever route got it."""
        return Decision(action=self.action, violation=self.violation, reason=self.reason, boxes=self.boxes,
                        note=self.note, version=self.version, load_label=self.load_label)


class RedecideRequest(ReviewRequest):
    """POST /v1/cases/{case}/redecide (and the page's re-decide): change a decision on
    purpose, saying why; audited as review.redecide and sent to the case system as a new version."""

    version: int = Field(ge=0, description="the case version the new decision was made on (required)")
    why: str = Field(min_length=1, max_length=500, description="why the decision changes (required, audited)")

    _clean_why = field_validator("why")(no_nul)

    def decision(self) -> Decision:
        return replace(super().decision(), why=self.why)


class DecisionConflictBody(BaseModel):
    """The 409 of a decision: who holds the case and its version now."""

    detail: str
    holder: str
    version: int
    review_status: str


class StatusCallback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["dispatched", "handled", "closed"]
    external_id: str = Field("", max_length=128)
    note: str = Field("", max_length=2000)

    _clean = field_validator("external_id", "note")(no_nul)


class EventResult(BaseModel):
    case_number: str
    action: str
    queued: str | None = None


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: Literal["camera", "reviewer", "case_system", "admin"]

    @field_validator("name")
    @classmethod
    def _shown_as_written(cls, value: str) -> str:
        if (problem := key_name_problem(value)) is not None:
            raise ValueError(problem)
        return value


class KeyRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: int = Field(86400, ge=0, le=90 * 86400,
                           description="seconds the old key keeps working beside its successor")


class KeyCreated(BaseModel):
    id: int
    name: str
    role: str
    key: str = Field(description="shown once; only its hash is stored")


class ModelReload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A file name in the served model's folder (weights/); no paths, so no other file is read.
    file: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,128}\.onnx$")


class ModelState(BaseModel):
    model_version: str
    file: str
    swaps: int  # models put live since start

    @classmethod
    def of(cls, detector: LiveDetector) -> ModelState:
        return cls(model_version=detector.version, file=detector.info.path.name, swaps=detector.swaps)


class CasePage(BaseModel):
    items: list[CasePublic]
    next_cursor: str | None
