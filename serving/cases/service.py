"""The case stage's front door: each call is one transaction, one writer at a time.

The work itself lives beside it: matching and ingest (`ingest.py`), the review and status
workflow (`review.py`), reading and paging (`listing.py`), what leaves (`public.py`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import record
from serving.cases.ingest import CaseIngest, IngestResult
from serving.cases.leases import QueueFilter, claim, held_by_other, release, renew
from serving.cases.listing import CaseFilter, find_case, page_of_cases
from serving.cases.policy import CaseError, CasePolicy
from serving.clock import SYSTEM_CLOCK, WallClock
from serving.cases.public import CasePublic
from serving.cases.recheck import Look, RecheckOutcome, apply_look, cancel, plan
from serving.cases.review import apply_review, apply_status, review_snapshot
from serving.cases.thresholds import ThresholdBook
from serving.cluster import leases as camera_leases
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.settings import RecheckSettings
from serving.store.db import Database
from serving.store.models import Case, Instance, Recheck


def stored_instance(db: Database) -> str:
    """The database's instance code, drawn once by its migration: the same for every process
    and restart on this database, different for another (or a reset) one."""
    with db.sessions() as session:
        return session.scalars(select(Instance.code).where(Instance.id == 1)).one()


class CaseService:
    def __init__(
        self,
        db: Database,
        evidence: EvidenceStore,
        taxonomy: Taxonomy,
        policy: CasePolicy | None = None,
        *,
        model_version: str | Callable[[], str] = "",
        public_url: str = "",
        instance: str | None = None,
        recheck: RecheckSettings | None = None,
        cameras: Callable[[], dict[str, Any]] = dict,
        thresholds: ThresholdBook | None = None,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        """`model_version`: the served model's version, or a function that says it now (the
        model can be swapped while the service runs); an event's own version comes first.
        `recheck`: re-check handled cases (None or disabled: the case system's "handled" is
        the end of it); `cameras()` the cameras run now, whose schedules the re-checks keep;
        `thresholds`: each review refits its camera x violation's thresholds."""
        self.db = db
        self.clock = clock
        self.evidence = evidence
        self.taxonomy = taxonomy
        self.policy = policy or CasePolicy()
        self.base_url = public_url.rstrip("/")
        current_version = model_version if callable(model_version) else lambda: model_version
        self.instance = instance or stored_instance(db)
        self._ingest = CaseIngest(taxonomy, self.policy, evidence, current_version, self.base_url, self.instance)
        # Matching is read-then-write; one writer at a time keeps two events for the same
        # place from both missing each other's new case.
        self._lock = threading.Lock()
        self.counts = {"events": 0, "cases_created": 0, "duplicates": 0}
        self.recheck = recheck if recheck is not None and recheck.enabled else None
        self.cameras = cameras
        self.thresholds = thresholds

    def ingest(self, event: ViolationEvent, frame: EvidenceFrame | None = None, *,
               fencing: int | None = None) -> IngestResult:
        """`fencing`: the lease number a camera worker (cluster mode) ran the camera under;
        an event under a number the camera no longer holds raises StaleLeaseError."""
        if event.violation not in self.taxonomy:
            raise CaseError(f"unknown violation {event.violation!r}", status=422)
        with self._lock, self.db.transaction() as session:
            if fencing is not None:
                camera_leases.check(session, event.camera, fencing)
            self.counts["events"] += 1
            result = self._ingest.apply(session, event, frame)
            if result.action == "duplicate":
                self.counts["duplicates"] += 1
            elif result.action == "created":
                self.counts["cases_created"] += 1
            return result

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

    def review(self, case_number: str, action: str, *, reviewer: str = "", note: str = "",
               violation: str | None = None, reason: str = "", boxes: list[list[float]] | None = None,
               lease_holder: str | None = None) -> CasePublic:
        """A decision, from the API or the review page alike. With `lease_holder` (the page)
        a case leased by someone else is refused, and the lease ends with the decision."""
        with self._lock, self.db.transaction() as session:
            case = self._existing(session, case_number)
            if lease_holder is not None and held_by_other(case, lease_holder):
                raise CaseError(f"case {case_number} is being reviewed by someone else", status=409)
            before = review_snapshot(case)
            detected = case.violation
            apply_review(session, case, action, self.taxonomy, self.base_url, reviewer=reviewer, note=note,
                         violation=violation, reason=reason, boxes=boxes)
            release(case)
            record(session, reviewer, f"review.{action}", f"case:{case_number}", before, review_snapshot(case))
            moved = self.thresholds.record(session, case, detected) if self.thresholds is not None else None
            session.flush()
            answer = self.public(case)
        if moved is not None:
            self.thresholds.invalidate()
        return answer

    def claim_next(self, holder: str, where: QueueFilter, skip: list[str], lease_s: float) -> Case | None:
        """Lease the next pending case for `holder`, with its evidence loaded."""
        with self._lock, self.db.transaction() as session:
            case = claim(session, holder, where, skip, lease_s, self.clock)
            if case is None:
                return None
            return self._existing(session, case.case_number)

    def renew_leases(self, holder: str, case_numbers: list[str], lease_s: float) -> int:
        with self.db.transaction() as session:
            return renew(session, holder, case_numbers, lease_s)

    def set_status(self, case_number: str, status: str, *, external_id: str = "") -> CasePublic:
        """Progress from the case system. "handled" plans the re-check in the same
        transaction; "closed" by the case system itself cancels a pending one."""
        with self._lock, self.db.transaction() as session:
            case = self._existing(session, case_number)
            apply_status(case, status, external_id)
            if status == "handled" and self.recheck is not None:
                plan(session, case, self.cameras().get(case.camera), self.recheck)
            elif status == "closed":
                cancel(session, case, "closed by the case system")
            session.flush()
            return self.public(case)

    # -- re-checks (serving/cases/recheck.py makes the looks) ----------------------------------
    def due_rechecks(self, now: datetime, limit: int = 50) -> list[tuple[int, str]]:
        """(re-check id, case number) of pending re-checks due by `now`, oldest first."""
        with self.db.sessions() as session:
            return [tuple(row) for row in session.execute(
                select(Recheck.id, Case.case_number).join(Case, Case.id == Recheck.case_id)
                .where(Recheck.state == "pending", Recheck.due_at <= now)
                .order_by(Recheck.due_at, Recheck.id).limit(limit)).all()]

    def finish_recheck(self, recheck_id: int, look: Look, frame: EvidenceFrame, model_version: str) -> str:
        """The look's outcome with its after photo, and the one message to the case system;
        a re-check already decided (another worker, a replay) is left as it is."""
        with self._lock, self.db.transaction() as session:
            recheck = session.get(Recheck, recheck_id)
            if recheck is None or recheck.state != "pending":
                return recheck.state if recheck is not None else "missing"
            case = session.get(Case, recheck.case_id)
            if not self._ingest.add_evidence(session, case, frame, model_version, after=True):
                return self._retry_or_fail(session, recheck, "the after photo could not be stored", None, 1)
            outcome: RecheckOutcome = apply_look(session, case, recheck, look, self.base_url)
            return outcome

    def recheck_failed(self, recheck_id: int, error: str, *, retry_at: datetime | None,
                       max_tries: int = 1) -> str:
        with self._lock, self.db.transaction() as session:
            recheck = session.get(Recheck, recheck_id)
            if recheck is None or recheck.state != "pending":
                return "skipped"
            return self._retry_or_fail(session, recheck, error, retry_at, max_tries)

    def postpone_recheck(self, recheck_id: int, due_at: datetime) -> str:
        with self._lock, self.db.transaction() as session:
            recheck = session.get(Recheck, recheck_id)
            if recheck is not None and recheck.state == "pending":
                recheck.due_at = due_at
            return "postponed"

    def _retry_or_fail(self, session, recheck: Recheck, error: str, retry_at: datetime | None,  # noqa: ANN001
                       max_tries: int) -> str:
        recheck.attempts += 1
        recheck.detail = error[:500]
        if retry_at is not None and recheck.attempts < max_tries:
            recheck.due_at = retry_at
            return "retry"
        recheck.state = "failed"
        recheck.checked_at = datetime.now(timezone.utc)
        case = session.get(Case, recheck.case_id)
        record(session, "recheck", "recheck.failed", f"case:{case.case_number}", None,
               {"error": recheck.detail, "attempts": recheck.attempts})
        return "failed"

    def rechecks_of(self, case_number: str) -> list[Recheck]:
        with self.db.sessions() as session:
            return list(session.scalars(select(Recheck).join(Case, Case.id == Recheck.case_id)
                                        .where(Case.case_number == case_number).order_by(Recheck.id)))

    def get(self, case_number: str) -> Case | None:
        with self.db.sessions() as session:
            return find_case(session, case_number)

    def list_cases(self, where: CaseFilter, *, cursor: str | None = None,
                   limit: int = 50) -> tuple[list[CasePublic], str | None]:
        with self.db.sessions() as session:
            rows, next_cursor = page_of_cases(session, where, cursor, limit)
            return [self.public(c) for c in rows], next_cursor

    def public(self, case: Case) -> CasePublic:
        return CasePublic.of(case, self.base_url)

    @staticmethod
    def _existing(session, case_number: str) -> Case:  # noqa: ANN001
        case = find_case(session, case_number)
        if case is None:
            raise CaseError(f"no case {case_number!r}", status=404)
        return case
