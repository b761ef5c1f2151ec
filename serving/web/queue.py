"""The review queue's view of a case: everything a reviewer needs on one screen, with its
times in the camera's local time and its audit trail in words; and the queue's own
bookkeeping (counts for the current filter, leases given back when a page closes,
rejecting a case's open duplicates at once)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel
from sqlalchemy import func, not_, select, update

from detector.boxes import pair_iou
from detector.second_stage import LOAD_DECISION
from detector.taxonomy import Taxonomy
from serving.audit import entries
from serving.cases.review import REVIEW_LOADS, has_load_decision
from serving.cases.leases import QueueFilter, filtered, free_for, held_by_other
from serving.cases.public import OmitsUnset
from serving.store.db import Database
from serving.store.models import AuditEntry, Case, CaseEvent, LabellingItem, Recheck
from serving.web.audit_view import AuditWords, audit_lines
from serving.web.localtime import CameraZones

NEARBY_DAYS = 7  # "cases at the same place in the last days"
SAME_PLACE_IOU = 0.3  # boxes of one camera overlapping this much are the same place
CASE_NUMBER = re.compile(r"GW\d{8}-[A-Z0-9-]+")


class Occurrence(OmitsUnset):
    type: str
    last_seen: str
    score: float
    at: str = ""  # last_seen in the camera's local time, with its zone
    type_label: str = ""  # the sighting type in the page's language
    # What the violation's second stage said of this sighting (the truck load decision): only
    # present when it said something, so other cases' timelines are as they always were.
    stage_label: str | None = None
    stage_score: float | None = None
    omitted_when_unset: ClassVar[tuple[str, ...]] = ("stage_label", "stage_score")


class LoadView(BaseModel):
    """The truck load decision on a case whose violation has one (muck_truck_uncovered): what
    the load stage said, in words, and what the reviewer said (the keyboard menu's choices)."""

    stage_label: str | None  # the latest sighting's label from the load stage; None: none given
    stage_score: float | None
    text: str  # in the page's language: the label and its score, or why a reviewer sees it
    review_load: str | None  # the reviewer's load label stored with the decision; None: not said
    review_text: str
    choices: list[dict[str, str]]  # [{id, label}] in menu order (keys 1..)


class FrameView(BaseModel):
    """One frame of the event's life, for the strip under the image, in camera time order."""

    url: str
    kind: str  # original (a best frame), moment (opened, update, closed), after (re-check)
    at: str  # the camera's local time the frame was taken (when it was stored, for older evidence)
    moments: list[str] = []  # opened, best, update, closed, recheck
    label: str = ""  # the moments in the page's language
    best: bool = False  # the case's photo now: the frame its boxes are drawn on


class CaseLink(BaseModel):
    """Another case beside this one: the one it duplicates, or one at the same place."""

    case_number: str
    violation: str
    name: str
    review_status: str
    first_seen: str
    url: str
    image_url: str | None


def recheck_saw(recheck: Recheck) -> Literal["it", "nothing", "less"] | None:
    if recheck.state == "reopened" and recheck.score is not None and recheck.iou is not None:
        return "it"
    if recheck.state == "verified":
        return "nothing" if recheck.score is None else "less"
    return None


class RecheckView(BaseModel):
    """The latest re-check of a handled case: the same place before and after, side by side."""

    state: str  # pending, verified, reopened, cancelled, failed
    due_at: str
    checked_at: str | None
    score: float | None
    iou: float | None
    # What the look saw, for the page to say in its language: the violation still there ("it"),
    # nothing of its classes at the place, or less than the rule's score; None: no look decided.
    saw: Literal["it", "nothing", "less"] | None = None
    detail: str  # as stored, in English: shown as it is only when `saw` is None (a failed look)
    before_url: str | None
    after_url: str | None
    due_at_local: str = ""
    checked_at_local: str = ""


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
    version: int = 0  # the case version a decision on this view names (serving/cases/review.py)
    recheck: RecheckView | None = None
    annotated_url: str | None = None  # the frame with the detection's box drawn in (the case page)
    first_seen_local: str = ""
    last_seen_local: str = ""
    audit: list[dict[str, Any]] = []  # the history as lines of changed fields, in the page's language
    frames: list[FrameView] = []
    duplicate_of: CaseLink | None = None
    nearby: list[CaseLink] = []
    load: LoadView | None = None  # only on a case whose violation has the load decision


def evidence_url(case_number: str, evidence_id: int) -> str:
    return f"/review/evidence/{case_number}/{evidence_id}"


def review_case(db: Database, taxonomy: Taxonomy, case: Case, *, zones: CameraZones | None = None,
                words: AuditWords | None = None, stages: Collection[str] = ()) -> ReviewCase:
    """`case` with its evidence loaded; times in `zones` (default: Asia/Shanghai), words for
    the audit trail and sighting types in `words`' language (default: English labels);
    `stages`: the second stages this service runs (e.g. "load_decision"), for the load view."""
    if zones is None:
        zones = CameraZones({}, "Asia/Shanghai")
    if words is None:
        from serving.web.i18n import labels

        words = AuditWords(labels("en"), taxonomy, "en")
    by_kind = {e.kind: e.id for e in case.evidence}
    entry = taxonomy.by_id.get(case.violation)
    with db.sessions() as session:
        events = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)).all()
        latest = session.scalars(select(Recheck).where(Recheck.case_id == case.id)
                                 .order_by(Recheck.id.desc()).limit(1)).first()
    history = entries(db, target=f"case:{case.case_number}", limit=50)
    recheck = None
    if latest is not None:
        before = by_kind.get("annotated", by_kind.get("original"))
        after = by_kind.get("after_annotated", by_kind.get("after"))  # the latest look's photo
        recheck = RecheckView(
            state=latest.state, due_at=latest.due_at.isoformat(),
            checked_at=latest.checked_at.isoformat() if latest.checked_at else None, score=latest.score,
            iou=latest.iou, saw=recheck_saw(latest), detail=latest.detail, before_url=evidence_url(case.case_number, before) if before else None,
            after_url=evidence_url(case.case_number, after) if after and latest.checked_at else None,
            due_at_local=zones.show(latest.due_at, case.camera), checked_at_local=zones.show(latest.checked_at, case.camera))
    return ReviewCase(
        case_number=case.case_number, violation=case.violation,
        name_zh=entry.name_zh if entry else case.matter_name, name_en=entry.name_en if entry else case.violation,
        matter_code=case.matter_code, camera=case.camera, grid=case.grid, address=case.address,
        dwell_s=case.dwell_s, score=case.score, model_version=case.model_version,
        first_seen=case.first_seen.isoformat(), last_seen=case.last_seen.isoformat(),
        review_status=case.review_status, box=case.box, review_boxes=case.review_boxes,
        image_url=evidence_url(case.case_number, by_kind["original"]) if "original" in by_kind else None,
        crop_url=evidence_url(case.case_number, by_kind["crop"]) if "crop" in by_kind else None,
        timeline=[Occurrence(type=e.event_type, last_seen=e.last_seen.isoformat(), score=e.score,
                             at=zones.show(e.last_seen, case.camera),
                             type_label=words.t.get(f"event_{e.event_type}", e.event_type),
                             stage_label=e.stage_label, stage_score=e.stage_score) for e in events],
        history=[r.to_json() for r in history],
        status=case.status, recheck=recheck, version=case.version,
        annotated_url=evidence_url(case.case_number, by_kind["annotated"]) if "annotated" in by_kind else None,
        first_seen_local=zones.show(case.first_seen, case.camera), last_seen_local=zones.show(case.last_seen, case.camera),
        audit=[line.to_json() for line in audit_lines(db, history, words, zones)],
        frames=timeline_frames(case, zones, words),
        duplicate_of=link(duplicate_of(db, case), taxonomy, words.lang, zones),
        nearby=[link(c, taxonomy, words.lang, zones) for c in nearby_cases(db, case)],
        load=load_view(case, events, taxonomy, words, stages),
    )


def load_words(label: str | None, score: float | None, t: dict[str, str]) -> str:
    word = t.get(f"load_{label}", label) if label else ""
    return f"{word} {score:.2f}" if label and score is not None else word


def load_view(case: Case, events: Sequence[CaseEvent], taxonomy: Taxonomy, words: AuditWords,
              stages: Collection[str]) -> LoadView | None:
    """The load decision on `case`, None where its violation has none. With no label from the
    stage, the reason the truck reached a reviewer: no classifier trained, or none given."""
    entry = taxonomy.by_id.get(case.violation)
    if entry is None or entry.second_stage != LOAD_DECISION:
        return None
    t = words.t
    said = next((e for e in reversed(events) if e.stage_label), None)
    if said is not None:
        text = load_words(said.stage_label, said.stage_score, t)
    else:
        text = t["load_unlabelled"] if LOAD_DECISION in stages else t["load_untrained"]
    return LoadView(stage_label=said.stage_label if said else None, stage_score=said.stage_score if said else None,
                    text=text, review_load=case.review_load,
                    review_text=load_words(case.review_load, None, t) if case.review_load else t["load_not_said"],
                    choices=[{"id": label, "label": t.get(f"load_{label}", label)} for label in REVIEW_LOADS])


def timeline_frames(case: Case, zones: CameraZones, words: AuditWords) -> list[FrameView]:
    """The event over time: each best frame, each moment kept (serving/cases/ingest.py) and
    each re-check photo, ordered by when the camera took it. Only the newest best frame is
    labelled "best": an earlier one is shown as the moment it was taken at."""
    frames = [e for e in case.evidence if e.kind in ("original", "moment", "after")]
    photo = max((e.id for e in frames if e.kind == "original"), default=None)
    out = []
    for item in sorted(frames, key=lambda e: (e.seen_at or e.created_at, e.id)):
        moments = [m for m in item.moment.split(",") if m and (m != "best" or item.id == photo)]
        if item.kind == "after":
            moments = ["recheck"]
        elif item.id == photo and "best" not in moments:
            moments.append("best")  # stored before frames carried their moment
        elif not moments:
            moments = ["update"]
        out.append(FrameView(url=evidence_url(case.case_number, item.id), kind=item.kind,
                             at=zones.show(item.seen_at or item.created_at, case.camera), moments=moments,
                             label=" · ".join(words.t.get(f"moment_{m}", m) for m in moments),
                             best=item.id == photo))
    return out


def link(case: Case | None, taxonomy: Taxonomy, lang: str, zones: CameraZones) -> CaseLink | None:
    if case is None:
        return None
    entry = taxonomy.by_id.get(case.violation)
    name = (entry.name_zh if lang == "zh-CN" else entry.name_en) if entry else case.violation
    original = max((e.id for e in case.evidence if e.kind == "original"), default=None)
    return CaseLink(case_number=case.case_number, violation=case.violation, name=name,
                    review_status=case.review_status, first_seen=zones.show(case.first_seen, case.camera),
                    url=f"/review/cases/{case.case_number}",
                    image_url=evidence_url(case.case_number, original) if original else None)


def _loaded(session, ids: list[int]) -> list[Case]:  # noqa: ANN001
    from sqlalchemy.orm import selectinload

    if not ids:
        return []
    return list(session.scalars(select(Case).where(Case.id.in_(ids)).options(selectinload(Case.evidence))
                                .order_by(Case.first_seen.desc())).all())


def nearby_cases(db: Database, case: Case, limit: int = 8) -> list[Case]:
    """Other cases of this camera whose box overlaps this one's, first seen in the last
    NEARBY_DAYS days before this case (or since): what happened at the same place."""
    since = case.first_seen - timedelta(days=NEARBY_DAYS)
    with db.sessions() as session:
        rows = session.execute(select(Case.id, Case.box).where(Case.camera == case.camera, Case.id != case.id,
                                                               Case.first_seen >= since)
                               .order_by(Case.first_seen.desc()).limit(500)).all()
        ids = [row_id for row_id, box in rows if pair_iou(box, case.box) >= 0.1][:limit]
        return _loaded(session, ids)


def duplicate_of(db: Database, case: Case) -> Case | None:
    """The case a "duplicate" rejection points to: one named in the note, else the oldest
    other case of the camera and violation at the same place that is not a duplicate itself."""
    if case.review_status != "rejected" or case.review_reason != "duplicate":
        return None
    with db.sessions() as session:
        named = [n for n in CASE_NUMBER.findall(case.review_note or "") if n != case.case_number]
        if named:
            row = session.scalar(select(Case.id).where(Case.case_number == named[0]))
        else:
            rows = session.execute(select(Case.id, Case.box, Case.review_reason)
                                   .where(Case.camera == case.camera, Case.violation == case.violation,
                                          Case.id != case.id).order_by(Case.first_seen).limit(500)).all()
            row = next((i for i, box, reason in rows if reason != "duplicate" and pair_iou(box, case.box) >= SAME_PLACE_IOU),
                       None)
        found = _loaded(session, [row] if row else [])
    return found[0] if found else None


def open_duplicates(db: Database, case: Case, holder: str, now: datetime) -> list[str]:
    """Pending cases of the same camera, violation and place as `case`, that no one else is
    reviewing `now` (the service's clock): what "reject all as duplicates" takes."""
    with db.sessions() as session:
        rows = session.execute(select(Case.case_number, Case.box, Case.leased_by, Case.lease_until)
                               .where(Case.camera == case.camera, Case.violation == case.violation,
                                      Case.review_status == "pending", Case.id != case.id)
                               .order_by(Case.first_seen)).all()
    return [row.case_number for row in rows
            if pair_iou(row.box, case.box) >= SAME_PLACE_IOU and not held_by_other(row, holder, now)]


@dataclass(frozen=True)
class QueueCounts:
    pending: int  # pending cases the filter selects
    leased_to_others: int  # of those, held by other reviewers right now
    mine_today: int  # decisions this reviewer made since local midnight


def queue_counts(db: Database, holder: str, where: QueueFilter, zones: CameraZones, now: datetime) -> QueueCounts:
    busy = not_(free_for(Case, holder, now))
    with db.sessions() as session:
        pending = session.scalar(filtered(select(func.count()).select_from(Case), where)
                                 .where(Case.review_status == "pending")) or 0
        others = session.scalar(filtered(select(func.count()).select_from(Case), where)
                                .where(Case.review_status == "pending", busy)) or 0
        mine = session.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.actor == holder, AuditEntry.action.like("review.%"),
            AuditEntry.at >= zones.day_start(now).astimezone(timezone.utc))) or 0
    return QueueCounts(pending=int(pending), leased_to_others=int(others), mine_today=int(mine))


def decided_versions(db: Database, case_numbers: list[str]) -> dict[str, int]:
    """Case number -> its version now, for those of `case_numbers` that are decided: what My
    history's re-decide buttons name (a case back to pending, after an undo, is not re-decided)."""
    if not case_numbers:
        return {}
    with db.sessions() as session:
        rows = session.execute(select(Case.case_number, Case.version).where(
            Case.case_number.in_(set(case_numbers)), Case.review_status != "pending")).all()
    return {number: version for number, version in rows}


def decided_loads(db: Database, taxonomy: Taxonomy, case_numbers: list[str]) -> dict[str, str]:
    """Case number -> the reviewer's load label ("" when not said), for those of `case_numbers`
    that are truck load cases: My history's re-decide dialog shows its load field on them."""
    if not case_numbers:
        return {}
    with db.sessions() as session:
        rows = session.execute(select(Case.case_number, Case.violation, Case.review_load).where(
            Case.case_number.in_(set(case_numbers)))).all()
    return {number: load or "" for number, violation, load in rows if has_load_decision(taxonomy, violation)}


def queue_cameras(db: Database, registered: list[str]) -> list[str]:
    """The camera filter's choices: the configured cameras and any that posted cases through
    the API (so a filter on one of those survives a reload or the language switch)."""
    with db.sessions() as session:
        posted = session.scalars(select(Case.camera).where(Case.review_status == "pending").distinct()).all()
    return sorted(set(registered) | set(posted))


def renew_or_retake(db: Database, holder: str, case_numbers: list[str], lease_s: float, now: datetime) -> int:
    """Extend `holder`'s leases on the cases the page holds, taking back any that are free
    again: a page that was hidden (or the page before it, on a navigation within the site)
    released them, and nobody else has taken them since. Returns how many are `holder`'s now.
    `now`: the service's clock, which leases are taken by (CaseService.claim_next)."""
    if not case_numbers:
        return 0
    with db.transaction() as session:
        return session.execute(
            update(Case).where(Case.case_number.in_(case_numbers), Case.review_status == "pending",
                               free_for(Case, holder, now))
            .values(leased_by=holder, lease_until=now + timedelta(seconds=lease_s), updated_at=Case.updated_at)
            .execution_options(synchronize_session=False)).rowcount


def release_leases(db: Database, holder: str, case_numbers: list[str], item_ids: list[int]) -> int:
    """The page was closed or hidden: give back `holder`'s leases at once instead of letting
    them time out, so other reviewers get these cases now. Returns how many were released."""
    released = 0
    with db.transaction() as session:
        if case_numbers:
            released += session.execute(
                update(Case).where(Case.case_number.in_(case_numbers), Case.leased_by == holder)
                .values(leased_by="", lease_until=None, updated_at=Case.updated_at)
                .execution_options(synchronize_session=False)).rowcount
        if item_ids:
            released += session.execute(
                update(LabellingItem).where(LabellingItem.id.in_(item_ids), LabellingItem.leased_by == holder)
                .values(leased_by="", lease_until=None).execution_options(synchronize_session=False)).rowcount
    return released


def violation_menu(taxonomy: Taxonomy) -> list[dict[str, Any]]:
    """The kinds a reviewer can pick, in taxonomy order (key 1-9, then 0); `load`: the kind has
    the truck load decision, so a correction to it carries the reviewer's load label."""
    return [{"id": v.id, "name_zh": v.name_zh, "name_en": v.name_en, "matter_code": v.matter_code,
             "load": has_load_decision(taxonomy, v.id)} for v in taxonomy.violations]
