"""What leaves the case stage: a case as the API returns it and the webhook sends it.

`CasePublic` is the one record of a case that crosses a boundary; its field names and
formats are a contract with the city's case system (tests/golden pins them byte for byte).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, PlainSerializer, SerializerFunctionWrapHandler, model_serializer

from serving.events import IsoTime, rounded
from serving.store.models import Case

# case.reopened: seen again after it ended, or still there at the re-check after "handled";
# case.verified: gone at the re-check, closed (both carry the before and after photos).
CaseEventName = Literal["case.reported", "case.updated", "case.retracted", "case.reopened", "case.verified"]


class OmitsUnset(BaseModel):
    """A record whose newer optional fields (`omitted_when_unset`) are left out of its JSON
    while unset, so the records that never carry them read as they always did."""

    omitted_when_unset: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self.omitted_when_unset:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class EvidencePublic(OmitsUnset):
    id: int
    kind: str
    sha256: str
    size: int
    media_type: str
    url: str
    # Its position in the evidence chain (serving/chain.py): with the bundle
    # (GET /v1/cases/{case}/bundle) the case system checks the hash against the signed chain.
    chain_seq: int | None = None
    # A timeline frame (kind "moment", "moment_annotated"): which moment of the event it shows
    # (opened, update, closed) and the camera time it was taken. Absent on other items, so
    # their JSON is as it always was.
    moment: str | None = None
    seen_at: IsoTime | None = None

    omitted_when_unset: ClassVar[tuple[str, ...]] = ("moment", "seen_at")


class CasePublic(BaseModel):
    case_number: str
    matter_code: str
    matter_name: str
    legacy_code: str | None
    violation: str
    division: str
    grid: str
    address: str
    description: str
    lat: float | None
    lon: float | None
    camera: str
    zone: str
    zone_type: str
    source: Literal["video"] = "video"  # the case system's channel field: every case comes from video
    detection_source: str
    discovered_at: IsoTime
    first_seen: IsoTime
    last_seen: IsoTime
    dwell_s: Annotated[float, rounded(3)]
    confidence: Annotated[float, rounded(4)]
    best_score: Annotated[float, rounded(4)]
    box: list[float] | None
    model_version: str
    needs_review: bool
    review_status: str
    status: str
    state: str
    occurrences: int
    reopened: int
    version: int
    external_id: str
    updated_at: Annotated[datetime | None, PlainSerializer(lambda v: v.isoformat() if v else None)]
    evidence: list[EvidencePublic]

    @classmethod
    def of(cls, case: Case, base_url: str) -> CasePublic:
        """`case` with its evidence loaded; `base_url` is where this service is reached."""
        return cls(
            case_number=case.case_number, matter_code=case.matter_code, matter_name=case.matter_name,
            legacy_code=case.legacy_code, violation=case.violation, division=case.division, grid=case.grid,
            address=case.address, description=describe(case), lat=case.lat, lon=case.lon, camera=case.camera,
            zone=case.zone, zone_type=case.zone_type, detection_source=case.detection_source,
            discovered_at=case.first_seen, first_seen=case.first_seen, last_seen=case.last_seen,
            dwell_s=case.dwell_s, confidence=case.score, best_score=case.best_score, box=case.box,
            model_version=case.model_version, needs_review=case.needs_review,
            review_status=case.review_status, status=case.status, state=case.state,
            occurrences=case.occurrences, reopened=case.reopened, version=case.version,
            external_id=case.external_id, updated_at=case.updated_at,
            evidence=[
                EvidencePublic(id=e.id, kind=e.kind, sha256=e.sha256, size=e.size, media_type=e.media_type,
                               url=f"{base_url}/v1/cases/{case.case_number}/evidence/{e.id}",
                               chain_seq=e.chain_seq,
                               **({"moment": e.moment, "seen_at": e.seen_at} if e.kind.startswith("moment") else {}))
                for e in case.evidence
            ],
        )


class WebhookBody(BaseModel):
    """The signed JSON body of one delivery: what happened to which version of the case."""

    event: CaseEventName
    version: int
    case: CasePublic


def describe(case: Case) -> str:
    """The case record's description line, as a patrol officer would write it."""
    place = case.address or f"grid {case.grid}"
    minutes = case.dwell_s / 60
    return (f"{case.matter_name} ({case.violation}) at {place}, zone {case.zone or '-'}: seen by camera "
            f"{case.camera} from {case.first_seen.isoformat()} for {minutes:.0f} min "
            f"(confidence {case.score:.2f}, {case.occurrences} sighting(s)).")[:500]
