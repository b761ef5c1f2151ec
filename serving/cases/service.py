"""The case stage's front door: each call is one transaction, one writer at a time.

The work itself lives beside it: matching and ingest (`ingest.py`), the review and status
workflow (`review.py`), reading and paging (`listing.py`), what leaves (`public.py`)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import record
from serving.cases.ingest import CaseIngest, IngestResult
from serving.cases.leases import QueueFilter, claim, held_by_other, release, renew
from serving.cases.listing import CaseFilter, find_case, page_of_cases
from serving.cases.policy import CaseError, CasePolicy
from serving.cases.public import CasePublic
from serving.cases.review import apply_review, apply_status, review_snapshot
from serving.cluster import leases as camera_leases
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.store.db import Database
from serving.store.models import Case, Instance


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
    ) -> None:
        """`model_version`: the served model's version, or a function that says it now (the
        model can be swapped while the service runs); an event's own version comes first."""
        self.db = db
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
            apply_review(session, case, action, self.taxonomy, self.base_url, reviewer=reviewer, note=note,
                         violation=violation, reason=reason, boxes=boxes)
            release(case)
            record(session, reviewer, f"review.{action}", f"case:{case_number}", before, review_snapshot(case))
            session.flush()
            return self.public(case)

    def claim_next(self, holder: str, where: QueueFilter, skip: list[str], lease_s: float) -> Case | None:
        """Lease the next pending case for `holder`, with its evidence loaded."""
        with self._lock, self.db.transaction() as session:
            case = claim(session, holder, where, skip, lease_s)
            if case is None:
                return None
            return self._existing(session, case.case_number)

    def renew_leases(self, holder: str, case_numbers: list[str], lease_s: float) -> int:
        with self.db.transaction() as session:
            return renew(session, holder, case_numbers, lease_s)

    def set_status(self, case_number: str, status: str, *, external_id: str = "") -> CasePublic:
        with self._lock, self.db.transaction() as session:
            case = self._existing(session, case_number)
            apply_status(case, status, external_id)
            session.flush()
            return self.public(case)

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
