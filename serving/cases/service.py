"""The case stage's front door: each call is one transaction, one writer at a time.

The work itself lives beside it: matching and ingest (`ingest.py`), the review and status
workflow (`review.py`), reading and paging (`listing.py`), what leaves (`public.py`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update

from detector.taxonomy import Taxonomy
from serving.audit import record
from serving.cases.ingest import CaseIngest, IngestResult
from serving.cases.leases import QueueFilter, claim, free_for, release
from serving.cases.listing import CaseFilter, find_case, page_of_cases
from serving.cases.policy import CaseError, CasePolicy
from serving.clock import SYSTEM_CLOCK, WallClock
from serving.cases.public import CasePublic
from serving.cases.recheck import Look, RecheckOutcome, apply_look, cancel, plan
from serving.cases.review import (
    Decision,
    DecisionConflict,
    DecisionThrottle,
    apply_review,
    apply_status,
    check_decision,
    conflict_of,
    restore_review,
    review_snapshot,
)
from serving.cases.thresholds import ThresholdBook
from serving.chain import EvidenceChain
from serving.cluster import leases as camera_leases
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.privacy import PrivacyPolicy
from serving.settings import RecheckSettings
from serving.store.db import Database
from serving.store.models import AuditEntry, Case, Instance, Recheck
from serving.streams.media import probe_image


log = logging.getLogger("gridwatch.cases")


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
        privacy: PrivacyPolicy | None = None,
        decisions_per_min: int = 0,
        chain: EvidenceChain | None = None,
    ) -> None:
        """`model_version`: the served model's version, or a function that says it now (the
        model can be swapped while the service runs); an event's own version comes first.
        `recheck`: re-check handled cases (None or disabled: the case system's "handled" is
        the end of it); `cameras()` the cameras run now, whose schedules the re-checks keep;
        `thresholds`: each review refits its camera x violation's thresholds;
        `decisions_per_min`: decisions one person may make in a minute (0: no limit);
        `chain`: the evidence chain a dropped timeline frame's tombstone is appended to."""
        self.db = db
        self.clock = clock
        self.evidence = evidence
        self.taxonomy = taxonomy
        self.policy = policy or CasePolicy()
        self.base_url = public_url.rstrip("/")
        current_version = model_version if callable(model_version) else lambda: model_version
        self.instance = instance or stored_instance(db)
        self._ingest = CaseIngest(taxonomy, self.policy, evidence, current_version, self.base_url, self.instance,
                                  privacy, chain)
        # Matching is read-then-write; one writer at a time keeps two events for the same
        # place from both missing each other's new case.
        self._lock = threading.Lock()
        self.counts = {"events": 0, "cases_created": 0, "duplicates": 0}
        self.recheck = recheck if recheck is not None and recheck.enabled else None
        self.cameras = cameras
        self.thresholds = thresholds
        self.throttle = DecisionThrottle(decisions_per_min)

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
        for path in result.dropped:  # timeline frames past the bound, their tombstone committed
            try:
                self.evidence.resolve(path).unlink(missing_ok=True)
            except OSError as exc:  # the chain says it was dropped; verify skips it either way
                log.warning("timeline frame %s not deleted: %s", path, exc)
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

    def decide(self, case_number: str, decision: Decision, *, reviewer: str,
               lease_holder: str | None = None) -> CasePublic:
        """A reviewer's decision, from the API or the review page alike. A first decision (no
        `why`) is refused (DecisionConflict) when the case is leased to someone other than
        `lease_holder` (default: the reviewer), already decided, or no longer at `version`
        (None: not checked, for API clients that predate versions); the lease ends with it.
        A re-decision (`why`) changes a decided case on the version the reviewer saw; audited
        as review.redecide and sent to the case system as a new version."""
        holder = lease_holder if lease_holder is not None else reviewer
        if decision.why is None:
            self.throttle.take(reviewer)
            return self._decide(case_number, decision, f"review.{decision.action}", reviewer=reviewer, holder=holder)
        if not decision.why.strip():
            raise CaseError("a re-decision needs a reason (why the decision changes)", status=422)
        if decision.version is None:
            raise CaseError("a re-decision names the case version it was made on", status=422)
        self.throttle.take(reviewer)
        return self._decide(case_number, replace(decision, why=decision.why.strip()[:500]), "review.redecide",
                            reviewer=reviewer, holder=holder)

    def review(self, case_number: str, action: str, *, reviewer: str = "", note: str = "",
               violation: str | None = None, reason: str = "", boxes: list[list[float]] | None = None,
               lease_holder: str | None = None, version: int | None = None) -> CasePublic:
        """The first decision on a pending case (`decide` without `why`)."""
        return self.decide(case_number, Decision(action, violation, reason, boxes, note, version),
                           reviewer=reviewer, lease_holder=lease_holder)

    def redecide(self, case_number: str, action: str, *, reviewer: str, why: str, version: int, note: str = "",
                 violation: str | None = None, reason: str = "", boxes: list[list[float]] | None = None,
                 lease_holder: str | None = None) -> CasePublic:
        """Change a decision, saying `why` (`decide` with `why`)."""
        return self.decide(case_number, Decision(action, violation, reason, boxes, note, version, why),
                           reviewer=reviewer, lease_holder=lease_holder)

    def _decide(self, case_number: str, decision: Decision, audit_action: str, *, reviewer: str,
                holder: str) -> CasePublic:
        action, violation, reason, boxes = decision.action, decision.violation, decision.reason, decision.boxes
        note, version, why = decision.note, decision.version, decision.why
        with self._lock, self.db.transaction() as session:
            case = self._existing(session, case_number)
            check_decision(case, action, self.taxonomy, violation, reason, decision.load_label)  # malformed: 422 first
            self._take(session, case, holder, version, redecide=why is not None)
            before = review_snapshot(case)
            detected = case.violation
            apply_review(session, case, action, self.taxonomy, self.base_url, reviewer=reviewer, note=note,
                         violation=violation, reason=reason, boxes=boxes,
                         frame=self._frame_size(case) if boxes is not None else None,
                         load_label=decision.load_label)
            after = review_snapshot(case)
            if why is not None:
                if after == before:
                    raise CaseError(f"case {case_number} already has this decision; nothing to change", status=422)
                after = {**after, "action": action, "why": why}
            release(case)
            record(session, reviewer, audit_action, f"case:{case_number}", before, after)
            moved = self.thresholds.record(session, case, detected) if self.thresholds is not None else None
            session.flush()
            answer = self.public(case)
        if moved is not None:
            self.thresholds.invalidate()
        return answer

    def undo(self, case_number: str, *, reviewer: str, version: int, within_s: float,
             lease_s: float) -> CasePublic:
        """Take back `reviewer`'s own latest decision on the case, made less than `within_s`
        ago and still the case's newest change (`version`): the review returns to what it was
        (a first decision: pending, leased back to the reviewer for `lease_s`), audited as
        review.undo, and what the case system was sent is followed by a new version."""
        self.throttle.take(reviewer)
        with self._lock, self.db.transaction() as session:
            case = self._existing(session, case_number)
            self._take(session, case, reviewer, version, redecide=True)
            last = session.scalars(select(AuditEntry).where(
                AuditEntry.target == f"case:{case_number}", AuditEntry.action.like("review.%"))
                .order_by(AuditEntry.id.desc()).limit(1)).first()
            now = datetime.now(timezone.utc)
            if (last is None or last.action == "review.undo" or last.actor != reviewer[:64]
                    or last.at < now - timedelta(seconds=within_s) or last.before is None):
                raise CaseError(f"case {case_number}: only your own latest decision of the last "
                                f"{within_s:g} s can be undone; re-decide it with a reason instead", status=409)
            before = review_snapshot(case)
            restore_review(session, case, last.before, self.taxonomy, self.base_url,
                           deliverable=self.policy.deliverable)
            if case.review_status == "pending":  # leased on the service's clock, as claim_next leases
                case.leased_by, case.lease_until = reviewer[:64], self.clock.now() + timedelta(seconds=lease_s)
            record(session, reviewer, "review.undo", f"case:{case_number}", before,
                   {**review_snapshot(case), "undid": last.action})
            moved = self.thresholds.record(session, case, case.violation) if self.thresholds is not None else None
            session.flush()
            answer = self.public(case)
        if moved is not None:
            self.thresholds.invalidate()
        return answer

    def _take(self, session, case: Case, holder: str, version: int | None, *, redecide: bool) -> None:  # noqa: ANN001
        """Make this transaction the case's one decider, or raise DecisionConflict. The
        conditional UPDATE is what makes it exclusive across processes: on PostgreSQL a second
        decider waits on the row and then finds it no longer matching; SQLite has one writer."""
        # The service's clock, as the lease was taken by (claim_next): a lease is judged on one clock.
        now = self.clock.now()
        conflict = conflict_of(case, holder, version, decided_ok=redecide, now=now)
        if conflict is not None:
            raise conflict
        status_now = Case.review_status != "pending" if redecide else Case.review_status == "pending"
        won = session.execute(
            update(Case).where(Case.id == case.id, Case.version == case.version, status_now,
                               free_for(Case, holder, now))
            .values(version=Case.version).execution_options(synchronize_session=False)).rowcount
        session.refresh(case)
        if not won:
            raise conflict_of(case, holder, version, decided_ok=redecide, now=now) or DecisionConflict(
                f"case {case.case_number} changed while this decision was made",
                holder=case.reviewed_by or case.leased_by, version=case.version, review_status=case.review_status)

    def _frame_size(self, case: Case) -> tuple[int, int] | None:
        """(width, height) of the newest original frame, whose pixels a reviewer's boxes are in."""
        originals = [e for e in case.evidence if e.kind == "original"]
        if not originals:
            return None
        try:
            data = self.evidence.resolve(max(originals, key=lambda e: e.id).path).read_bytes()
            _kind, width, height = probe_image(data, name="evidence")
        except (OSError, ValueError):  # a missing or unreadable frame: the boxes keep only their sanity checks
            return None
        return width, height

    def claim_next(self, holder: str, where: QueueFilter, skip: list[str], lease_s: float) -> Case | None:
        """Lease the next pending case for `holder`, with its evidence loaded."""
        with self._lock, self.db.transaction() as session:
            case = claim(session, holder, where, skip, lease_s, self.clock)
            if case is None:
                return None
            return self._existing(session, case.case_number)

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
