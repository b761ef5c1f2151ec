"""The review queue's view of a case: everything a reviewer needs on one screen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import entries
from serving.store.db import Database
from serving.store.models import Case, CaseEvent, Recheck


class Occurrence(BaseModel):
    type: str
    last_seen: str
    score: float


class RecheckView(BaseModel):
    """The latest re-check of a handled case: the same place before and after, side by side."""

    state: str  # pending, verified, reopened, cancelled, failed
    due_at: str
    checked_at: str | None
    score: float | None
    detail: str
    before_url: str | None
    after_url: str | None


class ReviewCase(BaseModel):
    """One case as the review page shows it (the API's CasePublic stays the contract)."""

    case_number: str
    violation: str
    name_zh: str
    name_en: str
    matter_code: str
    camera: str
    grid: str
    address: str
    dwell_s: float
    score: float
    model_version: str
    first_seen: str
    last_seen: str
    review_status: str
    box: list[float] | None
    review_boxes: list[list[float]] | None
    image_url: str | None
    crop_url: str | None
    timeline: list[Occurrence]
    history: list[dict[str, Any]]
    status: str = "new"  # the case system's status
    recheck: RecheckView | None = None


def evidence_url(case_number: str, evidence_id: int) -> str:
    return f"/review/evidence/{case_number}/{evidence_id}"


def review_case(db: Database, taxonomy: Taxonomy, case: Case) -> ReviewCase:
    """`case` with its evidence loaded."""
    by_kind = {e.kind: e.id for e in case.evidence}
    entry = taxonomy.by_id.get(case.violation)
    with db.sessions() as session:
        events = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)).all()
        latest = session.scalars(select(Recheck).where(Recheck.case_id == case.id)
                                 .order_by(Recheck.id.desc()).limit(1)).first()
    recheck = None
    if latest is not None:
        before = by_kind.get("annotated", by_kind.get("original"))
        after = by_kind.get("after_annotated", by_kind.get("after"))  # the latest look's photo
        recheck = RecheckView(
            state=latest.state, due_at=latest.due_at.isoformat(),
            checked_at=latest.checked_at.isoformat() if latest.checked_at else None, score=latest.score,
            detail=latest.detail, before_url=evidence_url(case.case_number, before) if before else None,
            after_url=evidence_url(case.case_number, after) if after and latest.checked_at else None)
    return ReviewCase(
        case_number=case.case_number, violation=case.violation,
        name_zh=entry.name_zh if entry else case.matter_name, name_en=entry.name_en if entry else case.violation,
        matter_code=case.matter_code, camera=case.camera, grid=case.grid, address=case.address,
        dwell_s=case.dwell_s, score=case.score, model_version=case.model_version,
        first_seen=case.first_seen.isoformat(), last_seen=case.last_seen.isoformat(),
        review_status=case.review_status, box=case.box, review_boxes=case.review_boxes,
        image_url=evidence_url(case.case_number, by_kind["original"]) if "original" in by_kind else None,
        crop_url=evidence_url(case.case_number, by_kind["crop"]) if "crop" in by_kind else None,
        timeline=[Occurrence(type=e.event_type, last_seen=e.last_seen.isoformat(), score=e.score) for e in events],
        history=[r.to_json() for r in entries(db, target=f"case:{case.case_number}", limit=50)],
        status=case.status, recheck=recheck,
    )


def violation_menu(taxonomy: Taxonomy) -> list[dict[str, str]]:
    """The kinds a reviewer can pick, in taxonomy order (key 1-9, then 0)."""
    return [{"id": v.id, "name_zh": v.name_zh, "name_en": v.name_en, "matter_code": v.matter_code}
            for v in taxonomy.violations]
