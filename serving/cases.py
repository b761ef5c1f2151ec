"""Violation events become cases: one case per violation instance, never a duplicate.

Matching runs on event time, not wall-clock time, so a replay of the same footage (after a
crash, or an archive run twice) lands on the cases it made the first time. Every change a
case system must hear about is written to the outbox in the same transaction as the change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from detector.taxonomy import Taxonomy
from serving.events import ViolationEvent
from serving.evidence import EvidenceError, EvidenceStore
from serving.store.db import Database
from serving.store.models import Case, CaseEvent, Evidence, OutboxMessage

IngestAction = Literal["created", "joined", "reopened", "ended", "duplicate"]
STATUS_ORDER = {"new": 0, "dispatched": 1, "handled": 2, "closed": 3}


class CaseError(ValueError):
    """A request about a case cannot be done; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CasePolicy:
    cooldown_s: float = 600.0
    min_iou: float = 0.1
    reopen_policy: Literal["reopen", "new"] = "reopen"
    auto_confirm: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> CasePolicy:
        return cls(
            cooldown_s=settings.dedup_cooldown_s,
            min_iou=settings.dedup_min_iou,
            reopen_policy=settings.reopen_policy,
            auto_confirm=dict(settings.auto_confirm),
        )


@dataclass(frozen=True)
class IngestResult:
    case_number: str
    action: IngestAction
    queued: str | None = None  # the outbox event written, if any


def iou(a: list[float] | tuple[float, ...] | None, b: list[float] | tuple[float, ...] | None) -> float | None:
    if a is None or b is None:
        return None
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class CaseService:
    def __init__(
        self,
        db: Database,
        evidence: EvidenceStore,
        taxonomy: Taxonomy,
        policy: CasePolicy | None = None,
        *,
        model_version: str = "",
        public_url: str = "",
    ) -> None:
        self.db = db
        self.evidence = evidence
        self.taxonomy = taxonomy
        self.policy = policy or CasePolicy()
        self.model_version = model_version
        self.public_url = public_url.rstrip("/")
        # Matching is read-then-write; one writer at a time keeps two events for the same
        # place from both missing each other's new case.
        self._lock = threading.Lock()
        self.counts = {"events": 0, "cases_created": 0, "duplicates": 0}

    # -- events ---------------------------------------------------------------------------
    def ingest(self, event: ViolationEvent) -> IngestResult:
        if event.violation not in self.taxonomy:
            raise CaseError(f"unknown violation {event.violation!r}", status=422)
        with self._lock, self.db.transaction() as session:
            self.counts["events"] += 1
            result = self._ingest(session, event)
            if result.action == "duplicate":
                self.counts["duplicates"] += 1
            elif result.action == "created":
                self.counts["cases_created"] += 1
            return result

    def _ingest(self, session: Session, event: ViolationEvent) -> IngestResult:
        if session.bind.dialect.name == "postgresql":
            # Several processes on one PostgreSQL: one writer per place at a time, held
            # until this transaction ends. (SQLite: one process per database file.)
            place = f"{event.camera}|{event.violation}|{event.zone}".encode()
            key = int.from_bytes(hashlib.blake2b(place, digest_size=8).digest(), "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        seen = session.scalars(
            select(CaseEvent).where(CaseEvent.event_id == event.event_id)
        ).all()
        if any(e.event_type == event.type and e.last_seen == event.last_seen for e in seen):
            case = session.get(Case, seen[0].case_id)
            return IngestResult(case.case_number, "duplicate")
        case = session.get(Case, seen[0].case_id) if seen else self._match(session, event)
        action: IngestAction
        queued = None
        if case is None:
            case = self._create(session, event)
            action = "created"
        elif not seen and case.state == "ended" and event.type != "closed" and self._beyond_cooldown(case, event):
            if self.policy.reopen_policy == "new" or case.status == "closed":
                case = self._create(session, event)
                action = "created"
            else:
                case.reopened += 1
                case.state = "active"
                self._observe(session, case, event)
                action = "reopened"
                if case.version > 0 and self.deliverable(case):
                    queued = self._queue(session, case, "case.reopened")
        else:
            self._observe(session, case, event)
            action = "ended" if event.type == "closed" else "joined"
        if action == "created" and self.deliverable(case):
            queued = self._queue(session, case, "case.reported")
        session.add(CaseEvent(case_id=case.id, event_id=event.event_id, event_type=event.type,
                              last_seen=event.last_seen, score=event.score))
        return IngestResult(case.case_number, action, queued)

    def _match(self, session: Session, event: ViolationEvent) -> Case | None:
        candidates = session.scalars(
            select(Case)
            .where(Case.camera == event.camera, Case.violation == event.violation, Case.zone == event.zone)
            .order_by(Case.last_seen.desc())
            .limit(50)
        ).all()
        placed = [c for c in candidates if self._same_place(c, event)]
        active = [c for c in placed if c.state == "active"]
        # Else the newest ended case at this place: the same violation seen again (within
        # the cooldown a flicker; beyond it reopened or filed anew, per policy).
        return active[0] if active else (placed[0] if placed else None)

    def _same_place(self, case: Case, event: ViolationEvent) -> bool:
        overlap = iou(case.box, event.box)
        return overlap is None or overlap >= self.policy.min_iou

    def _beyond_cooldown(self, case: Case, event: ViolationEvent) -> bool:
        return event.first_seen > case.last_seen + timedelta(seconds=self.policy.cooldown_s)

    def _create(self, session: Session, event: ViolationEvent) -> Case:
        violation = self.taxonomy[event.violation]
        case = Case(
            case_number=f"tmp-{uuid.uuid4().hex[:24]}",
            camera=event.camera,
            violation=event.violation,
            zone=event.zone,
            zone_type=event.zone_type,
            matter_code=event.matter_code,
            matter_name=violation.name_zh,
            legacy_code=event.legacy_code or violation.legacy_code,
            division=event.division or event.matter_code[:6],
            grid=event.grid,
            address=event.location.address[:256],
            lat=event.location.lat,
            lon=event.location.lon,
            detection_source=event.source,
            first_seen=event.first_seen,
            last_seen=event.last_seen,
            dwell_s=event.dwell_s,
            score=event.score,
            best_score=0.0,
            box=list(event.box) if event.box is not None else None,
            model_version=self.model_version,
            needs_review=event.needs_review,
            state="ended" if event.type == "closed" else "active",
            occurrences=0,
        )
        session.add(case)
        session.flush()
        case.case_number = f"GW{event.first_seen.astimezone(timezone.utc):%Y%m%d}-{case.id:06d}"
        self._observe(session, case, event)
        return case

    def _observe(self, session: Session, case: Case, event: ViolationEvent) -> None:
        if event.type == "opened" or case.occurrences == 0:
            case.occurrences += 1
        case.first_seen = min(case.first_seen, event.first_seen)
        case.last_seen = max(case.last_seen, event.last_seen)
        case.dwell_s = max(case.dwell_s, event.dwell_s)
        case.score = event.score
        case.needs_review = case.needs_review or event.needs_review
        if event.type == "closed":
            case.state = "ended"
        elif case.state == "ended":
            case.state = "active"
        better = max(event.best_score, event.score) > case.best_score
        if event.evidence and (better or not case.evidence):
            case.best_score = max(case.best_score, event.best_score, event.score)
            if event.box is not None:
                case.box = list(event.box)
            self._add_evidence(session, case, event)
        case.updated_at = datetime.now(timezone.utc)

    def _add_evidence(self, session: Session, case: Case, event: ViolationEvent) -> None:
        try:
            stored = self.evidence.put_event_evidence(case.case_number, event.evidence, event.box, event.violation)
        except EvidenceError:
            # A case without a picture still reaches a reviewer; a missing file must not drop it.
            if not case.evidence:
                case.needs_review = True
            return
        have = {(e.kind, e.sha256) for e in case.evidence}
        for item in stored:
            if (item.kind, item.sha256) not in have:
                case.evidence.append(Evidence(kind=item.kind, path=item.path, sha256=item.sha256,
                                              size=item.size, media_type=item.media_type))
        session.flush()

    def end_stale(self, cameras: set[str] | None = None) -> int:
        """At start-up: a previous process may have died with violations open. Nothing watches
        them now, so they end at their last sighting; a stream that sees the thing again
        within the cooldown joins the same case."""
        with self._lock, self.db.transaction() as session:
            query = select(Case).where(Case.state == "active")
            if cameras is not None:
                query = query.where(Case.camera.in_(cameras))
            stale = session.scalars(query).all()
            for case in stale:
                case.state = "ended"
            return len(stale)

    # -- delivery decisions ---------------------------------------------------------------
    def deliverable(self, case: Case) -> bool:
        if case.review_status in ("confirmed", "corrected"):
            return True
        if case.review_status != "pending" or case.needs_review:
            return False
        threshold = self.policy.auto_confirm.get(case.violation)
        return threshold is not None and case.score >= threshold

    def _queue(self, session: Session, case: Case, event_name: str) -> str:
        case.version += 1
        payload = {"event": event_name, "version": case.version, "case": self.to_dict(case)}
        key = f"{case.case_number}-v{case.version}"
        session.add(OutboxMessage(case_id=case.id, case_version=case.version, idempotency_key=key,
                                  event=event_name, payload=json.dumps(payload, ensure_ascii=False, sort_keys=True)))
        return event_name

    # -- people and the case system --------------------------------------------------------
    def review(self, case_number: str, action: str, *, reviewer: str = "", note: str = "",
               violation: str | None = None) -> Case:
        if action not in ("confirm", "correct", "reject"):
            raise CaseError(f"unknown review action {action!r}", status=422)
        with self._lock, self.db.transaction() as session:
            case = self._get_for_update(session, case_number)
            was_queued = case.version > 0
            if action == "correct":
                if violation is None or violation not in self.taxonomy:
                    raise CaseError("correct needs a known 'violation'", status=422)
                entry = self.taxonomy[violation]
                case.violation = violation
                case.matter_code = (case.division or case.matter_code[:6]) + entry.matter_code
                case.matter_name = entry.name_zh
                case.legacy_code = entry.legacy_code
                case.review_status = "corrected"
            else:
                case.review_status = "confirmed" if action == "confirm" else "rejected"
            case.review_note = note[:2000]
            case.reviewed_by = reviewer[:64]
            case.updated_at = datetime.now(timezone.utc)
            if action == "reject":
                if was_queued:
                    self._queue(session, case, "case.retracted")
            elif not was_queued:
                self._queue(session, case, "case.reported")
            else:
                self._queue(session, case, "case.updated")
            return case

    def set_status(self, case_number: str, status: str, *, external_id: str = "") -> Case:
        if status not in STATUS_ORDER:
            raise CaseError(f"unknown status {status!r}", status=422)
        with self._lock, self.db.transaction() as session:
            case = self._get_for_update(session, case_number)
            if STATUS_ORDER[status] < STATUS_ORDER[case.status]:
                raise CaseError(f"case {case_number} is {case.status}; cannot go back to {status}")
            case.status = status
            if external_id:
                case.external_id = external_id[:128]
            case.updated_at = datetime.now(timezone.utc)
            return case

    def _get_for_update(self, session: Session, case_number: str) -> Case:
        case = session.scalars(select(Case).where(Case.case_number == case_number)).one_or_none()
        if case is None:
            raise CaseError(f"no case {case_number!r}", status=404)
        return case

    # -- reading ----------------------------------------------------------------------------
    def get(self, case_number: str) -> Case | None:
        with self.db.sessions() as session:
            case = session.scalars(select(Case).where(Case.case_number == case_number)).one_or_none()
            if case is not None:
                _ = case.evidence  # load before the session closes
            return case

    def list_cases(
        self,
        *,
        camera: str | None = None,
        violation: str | None = None,
        review_status: str | None = None,
        status: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        delivered_only: bool = False,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Cases in the order they last changed (updated_at, id): a poller keeps the last
        cursor (or the newest updated_at as `since`) and asks again."""
        query = select(Case)
        for column, value in ((Case.camera, camera), (Case.violation, violation),
                              (Case.review_status, review_status), (Case.status, status), (Case.state, state)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(Case.updated_at > since)
        if delivered_only:
            query = query.where(Case.version > 0)
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor)
            query = query.where((Case.updated_at > after_time)
                                | ((Case.updated_at == after_time) & (Case.id > after_id)))
        query = query.order_by(Case.updated_at, Case.id).limit(limit + 1)
        with self.db.sessions() as session:
            rows = session.scalars(query).all()
            items = [self.to_dict(c) for c in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1].updated_at, rows[limit - 1].id) if len(rows) > limit else None
        return items, next_cursor

    def evidence_url(self, case: Case, evidence: Evidence) -> str:
        return f"{self.public_url}/v1/cases/{case.case_number}/evidence/{evidence.id}"

    def to_dict(self, case: Case) -> dict[str, Any]:
        return {
            "case_number": case.case_number,
            "matter_code": case.matter_code,
            "matter_name": case.matter_name,
            "legacy_code": case.legacy_code,
            "violation": case.violation,
            "division": case.division,
            "grid": case.grid,
            "address": case.address,
            "description": describe(case),
            "lat": case.lat,
            "lon": case.lon,
            "camera": case.camera,
            "zone": case.zone,
            "zone_type": case.zone_type,
            "source": case.source,
            "detection_source": case.detection_source,
            "discovered_at": case.first_seen.isoformat(),
            "first_seen": case.first_seen.isoformat(),
            "last_seen": case.last_seen.isoformat(),
            "dwell_s": round(case.dwell_s, 3),
            "confidence": round(case.score, 4),
            "best_score": round(case.best_score, 4),
            "box": case.box,
            "model_version": case.model_version,
            "needs_review": case.needs_review,
            "review_status": case.review_status,
            "status": case.status,
            "state": case.state,
            "occurrences": case.occurrences,
            "reopened": case.reopened,
            "version": case.version,
            "external_id": case.external_id,
            "updated_at": case.updated_at.isoformat() if case.updated_at else None,
            "evidence": [
                {"id": e.id, "kind": e.kind, "sha256": e.sha256, "size": e.size,
                 "media_type": e.media_type, "url": self.evidence_url(case, e)}
                for e in case.evidence
            ],
        }


def encode_cursor(updated_at: datetime, case_id: int) -> str:
    raw = f"{updated_at.astimezone(timezone.utc).isoformat()}|{case_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, case_id = raw.split("|")
        parsed = datetime.fromisoformat(when)
        number = int(case_id)
        if parsed.tzinfo is None or not 0 <= number < 2**31:
            raise ValueError("out of range")
        return parsed.astimezone(timezone.utc), number
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise CaseError("invalid cursor", status=422) from exc


def describe(case: Case) -> str:
    """The case record's description line, as a patrol officer would write it."""
    place = case.address or f"grid {case.grid}"
    minutes = case.dwell_s / 60
    return (f"{case.matter_name} ({case.violation}) at {place}, zone {case.zone or '-'}: seen by camera "
            f"{case.camera} from {case.first_seen.isoformat()} for {minutes:.0f} min "
            f"(confidence {case.score:.2f}, {case.occurrences} sighting(s)).")[:500]
