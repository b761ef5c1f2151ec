"""Events become cases: one case per violation instance, never a duplicate.

Matching runs on event time, not wall-clock time, so a replay of the same footage (after a
crash, or an archive run twice) lands on the cases it made the first time. Every change a
case system must hear about is written to the outbox in the same transaction as the change.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from detector.boxes import box_iou
from detector.taxonomy import Taxonomy
from serving.cases.outbox import queue_version
from serving.cases.policy import CasePolicy
from serving.chain import TOMBSTONE, EvidenceChain, canonical
from serving.events import ViolationEvent
from serving.evidence import EvidenceError, EvidenceFrame, EvidenceStore
from serving.privacy import PrivacyPolicy
from serving.store.models import Case, CaseEvent, Evidence

IngestAction = Literal["created", "joined", "reopened", "ended", "duplicate"]
# What a new case takes from its first event as it is; the rest is derived below.
CASE_FIELDS_FROM_EVENT = {"camera", "violation", "zone", "zone_type", "matter_code", "grid", "first_seen",
                          "last_seen", "dwell_s", "score", "needs_review"}
# The moment of the event each transition's frame shows on the case's timeline.
MOMENT_OF = {"opened": "opened", "updated": "update", "closed": "closed"}


def case_number(first_seen: datetime, instance: str, row_id: int) -> str:
    """GW{date}-{instance}-{row}: the row id alone repeats across databases, and the case
    number is the Idempotency-Key's stem, so the instance code keeps both unique."""
    return f"GW{first_seen.astimezone(timezone.utc):%Y%m%d}-{instance}-{row_id:06d}"


@dataclass(frozen=True)
class IngestResult:
    case_number: str
    action: IngestAction
    queued: str | None = None  # the outbox event written, if any
    # Evidence files of timeline frames dropped past the bound: deleted once the transaction
    # that dropped them (and chained their tombstone) has committed.
    dropped: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class CaseIngest:
    """Applies one event (and its evidence frame) inside the caller's transaction."""

    taxonomy: Taxonomy
    policy: CasePolicy
    evidence: EvidenceStore
    model_version: Callable[[], str]  # the served model's, for events that do not say theirs
    base_url: str
    instance: str  # this database's code (serving.store.models.Instance), in every case number
    privacy: PrivacyPolicy | None = None  # people masked in every copy that leaves (serving/privacy.py)
    chain: EvidenceChain | None = None  # where a dropped timeline frame's tombstone goes (serving/chain.py)

    def apply(self, session: Session, event: ViolationEvent, frame: EvidenceFrame | None) -> IngestResult:
        if session.bind.dialect.name == "postgresql":
            # Several processes on one PostgreSQL: one writer per place at a time, held
            # until this transaction ends. (SQLite: one process per database file.)
            place = f"{event.camera}|{event.violation}|{event.zone}".encode()
            key = int.from_bytes(hashlib.blake2b(place, digest_size=8).digest(), "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        seen = session.scalars(select(CaseEvent).where(CaseEvent.event_id == event.event_id)).all()
        if any(e.event_type == event.type and e.last_seen == event.last_seen for e in seen):
            case = session.get(Case, seen[0].case_id)
            return IngestResult(case.case_number, "duplicate")
        case = session.get(Case, seen[0].case_id) if seen else self._match(session, event)
        action: IngestAction
        queued = None
        session.info["dropped_evidence"] = []
        if case is None:
            case = self._create(session, event, frame)
            action = "created"
        elif not seen and case.state == "ended" and event.type != "closed" and self._beyond_cooldown(case, event):
            if self.policy.reopen_policy == "new" or case.status == "closed":
                case = self._create(session, event, frame)
                action = "created"
            else:
                case.reopened += 1
                case.state = "active"
                self._observe(session, case, event, frame, seen=())
                action = "reopened"
                if case.version > 0 and self.policy.deliverable(case):
                    queued = queue_version(session, case, "case.reopened", self.base_url)
        else:
            self._observe(session, case, event, frame, seen=seen)
            action = "ended" if event.type == "closed" else "joined"
        if action == "created" and self.policy.deliverable(case):
            queued = queue_version(session, case, "case.reported", self.base_url)
        session.add(CaseEvent(case_id=case.id, event_id=event.event_id, event_type=event.type,
                              last_seen=event.last_seen, score=event.score,
                              stage_label=event.stage_label, stage_score=event.stage_score))
        return IngestResult(case.case_number, action, queued, tuple(session.info.pop("dropped_evidence", [])))

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
        if case.box is None or event.box is None:
            return True  # nothing to compare: the zone decides
        overlap = box_iou(np.asarray([case.box], np.float64), np.asarray([event.box], np.float64))[0, 0]
        return float(overlap) >= self.policy.min_iou

    def _beyond_cooldown(self, case: Case, event: ViolationEvent) -> bool:
        return event.first_seen > case.last_seen + timedelta(seconds=self.policy.cooldown_s)

    def _create(self, session: Session, event: ViolationEvent, frame: EvidenceFrame | None) -> Case:
        violation = self.taxonomy[event.violation]
        case = Case(
            **event.model_dump(include=CASE_FIELDS_FROM_EVENT),
            **event.location.model_dump(include={"lat", "lon"}),
            case_number=f"tmp-{uuid.uuid4().hex[:24]}",
            matter_name=violation.name_zh,
            legacy_code=event.legacy_code or violation.legacy_code,
            division=event.division or event.matter_code[:6],
            address=event.location.address[:256],
            detection_source=event.source,
            best_score=0.0,
            box=list(event.box) if event.box is not None else None,
            model_version=event.model_version or self.model_version(),
            state="ended" if event.type == "closed" else "active",
            occurrences=0,
        )
        session.add(case)
        session.flush()
        case.case_number = case_number(event.first_seen, self.instance, case.id)
        self._observe(session, case, event, frame, seen=())
        return case

    def _observe(self, session: Session, case: Case, event: ViolationEvent, frame: EvidenceFrame | None,
                 seen: Sequence[CaseEvent]) -> None:
        """`seen`: what the case already holds of this event id. One event id is one sighting,
        counted when the case first hears of it, whichever transition comes first: an opening
        sent again (a file camera replayed after a move to another node) or one arriving after
        its own closing (a hand-off files the release's closing before a pull already under
        way brings the opening) is neither a new occurrence nor a reason to wake the case."""
        if not seen:
            case.occurrences += 1
        closed_before = any(e.event_type == "closed" for e in seen)
        opened_again = event.type == "opened" and any(e.event_type == "opened" for e in seen)
        case.first_seen = min(case.first_seen, event.first_seen)
        case.last_seen = max(case.last_seen, event.last_seen)
        case.dwell_s = max(case.dwell_s, event.dwell_s)
        case.score = event.score
        case.needs_review = case.needs_review or event.needs_review
        if event.type == "closed":
            case.state = "ended"
        elif case.state == "ended" and not closed_before:
            case.state = "active"
        # A frame that may be the best (the pipeline's best so far, an upload) is the case's photo
        # when its score beats the case's; the latest sighting's frame never is.
        better = frame is not None and frame.best and max(event.best_score, event.score) > case.best_score
        moment = [] if opened_again else [MOMENT_OF[event.type]]
        version = event.model_version or self.model_version()
        seen_at = (frame.taken_at or event.last_seen) if frame is not None else None
        if frame is not None and (better or not any(e.kind == "original" for e in case.evidence)):
            case.best_score = max(case.best_score, event.best_score, event.score)
            if event.box is not None and frame.best:
                case.box = list(event.box)
            self.add_evidence(session, case, frame, version, moment=",".join([*moment, "best"]), seen_at=seen_at)
        elif frame is not None and moment and self.policy.timeline_frames > 0 and not self._stored(case, frame):
            if self.add_evidence(session, case, frame, version, moment=moment[0], seen_at=seen_at):
                self._bound_timeline(session, case)
        case.updated_at = datetime.now(timezone.utc)

    @staticmethod
    def _stored(case: Case, frame: EvidenceFrame) -> bool:
        """The same picture the case already holds (an edge box sending its frame again with
        the next transition) is not a new moment of the event."""
        if frame.encoded is None:
            return False  # a decoded camera frame: a new sighting
        digest = hashlib.sha256(frame.encoded).hexdigest()
        return any(e.sha256 == digest for e in case.evidence if e.kind in ("original", "moment"))

    def _bound_timeline(self, session: Session, case: Case) -> None:
        """At most `policy.timeline_frames` moment frames: the oldest updates go first, then
        the oldest openings and closings but the first opening and the latest closing; each
        drop is a tombstone in the evidence chain, like a retention purge."""
        frames: dict[tuple, list[Evidence]] = {}
        for item in case.evidence:
            if item.moment and item.seen_at is not None:
                frames.setdefault((item.seen_at, item.moment), []).append(item)
        timeline = sorted((key for key, items in frames.items() if any(e.kind == "moment" for e in items)),
                          key=lambda key: key[0])
        excess = len(timeline) - self.policy.timeline_frames
        if excess <= 0:
            return
        opened = [k for k in timeline if "opened" in k[1].split(",")]
        closed = [k for k in timeline if "closed" in k[1].split(",")]
        keep = {opened[0] if opened else None, closed[-1] if closed else None, timeline[-1]}
        order = ([k for k in timeline if k[1] == "update" and k not in keep]
                 + [k for k in timeline if k[1] != "update" and k not in keep] + [k for k in timeline if k in keep])
        items = [item for key in order[:excess] for item in frames[key]]
        if self.chain is not None:
            detail = {"rule": f"timeline: keep {self.policy.timeline_frames} frames",
                      "removed": [e.chain_seq for e in items if e.chain_seq is not None],
                      "items": [{"seq": e.chain_seq, "kind": e.kind, "sha256": e.sha256, "path": e.path}
                                for e in items],
                      "at": datetime.now(timezone.utc).isoformat()}
            self.chain.append(session, case.case_number, TOMBSTONE,
                              hashlib.sha256(canonical(detail).encode("utf-8")).hexdigest(), detail=detail)
        for item in items:
            case.evidence.remove(item)
        session.flush()
        session.info.setdefault("dropped_evidence", []).extend(e.path for e in items)

    def add_evidence(self, session: Session, case: Case, frame: EvidenceFrame, model_version: str, *,
                     after: bool = False, moment: str = "", seen_at: datetime | None = None) -> bool:
        """The frame's files among the case's evidence (`after`: a re-check's photo), each
        marked with the event's `moment` it shows and when (`seen_at`): a moment without
        "best" is a timeline frame, stored as "moment" items. False when it could not be stored."""
        if self.privacy is not None:
            frame = self.privacy.apply(frame, case.violation)
        timeline_only = bool(moment) and "best" not in moment.split(",")
        try:
            stored = self.evidence.write(case.case_number, frame, after=after, moment=timeline_only)
        except EvidenceError:
            # A case without a picture still reaches a reviewer; a bad frame must not drop it.
            if not case.evidence and not after and not timeline_only:
                case.needs_review = True
            return False
        have = {(e.kind, e.sha256) for e in case.evidence}
        for item in stored:
            if (item.kind, item.sha256) not in have:
                frame_kind = item.kind in ("original", "after", "moment")
                seen = frame.detections if frame_kind else None
                case.evidence.append(Evidence(kind=item.kind, path=item.path, sha256=item.sha256,
                                              size=item.size, media_type=item.media_type, masks=item.masks,
                                              detections=seen.to_records() if seen is not None else None,
                                              model_version=model_version if frame_kind else "",
                                              moment=moment, seen_at=seen_at))
        session.flush()
        return True
