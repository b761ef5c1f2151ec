"""What people and the case system do to a case: review it, and report its progress.

A decision is exclusive: it names the case version it was made on, and one made on a
stale version, on a case leased to someone else, or on a case already decided is refused
with who holds it (DecisionConflict, a 409). Changing a decision is its own audited action
(redecide, undo), never a second decision. Decisions per person are throttled."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from detector.second_stage import COVERED, LOAD_DECISION, LOAD_LABELS
from detector.taxonomy import Taxonomy
from serving.cases.leases import held_by_other
from serving.cases.outbox import queue_version
from serving.cases.policy import STATUS_ORDER, CaseError
from serving.frame_boxes import BoxError, clip_box
from serving.store.models import REJECT_REASONS, Case

REVIEW_ACTIONS = ("confirm", "correct", "reject")
# What a reviewer may say a truck's load was: the load stage's own labels, and `covered`
# where they tell a cover but not which (as the training examples know them).
REVIEW_LOADS = (*LOAD_LABELS, COVERED)


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on a case as every entry hands it to CaseService.decide (the
    API's review and redecide, the page's decision and re-decision alike): `why` set makes
    it a re-decision of a decided case, audited as review.redecide."""

    action: str
    violation: str | None = None  # for "correct": the right violation id
    reason: str = ""  # with "reject": one of REJECT_REASONS
    boxes: list[list[float]] | None = None  # the reviewer's own boxes, in the original frame's pixels
    note: str = ""
    version: int | None = None  # the case version it was made on (None: not checked; first decisions only)
    why: str | None = None  # why a decision changes (a re-decision)
    # On a case whose violation has the load decision (muck_truck_uncovered): what the load
    # really was (REVIEW_LOADS), stored with the decision and exported for training; None: not
    # said (a re-decision keeps the load said before).
    load_label: str | None = None


class DecisionConflict(CaseError):
    """A decision that may not be made now: someone else holds the case (a lease, or their
    decision already stands) or it changed since the version the decision was made on."""

    def __init__(self, message: str, *, holder: str, version: int, review_status: str) -> None:
        super().__init__(message, status=409)
        self.holder = holder
        self.version = version
        self.review_status = review_status

    def to_json(self) -> dict:
        return {"detail": str(self), "holder": self.holder, "version": self.version,
                "review_status": self.review_status}


class Throttled(CaseError):
    """Too many decisions from one person in a minute (a 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class DecisionThrottle:
    """At most `per_minute` decisions (first decisions, re-decisions and undos alike) per
    person in any 60 s; 0 turns it off. In the process: decisions all pass through it."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        if self.per_minute <= 0:
            return
        now = self._clock()
        with self._lock:
            times = self._times.setdefault(who, deque())
            while times and times[0] <= now - 60.0:
                times.popleft()
            if len(times) >= self.per_minute:
                wait = times[0] + 60.0 - now
                raise Throttled(f"more than {self.per_minute} decisions a minute; try again in {wait:.0f} s", wait)
            times.append(now)
            # People who stopped deciding are forgotten, so the map stays as small as the team.
            for name in [n for n, t in self._times.items() if t and t[-1] <= now - 60.0]:
                del self._times[name]


def review_snapshot(case: Case) -> dict:
    """What a review can change, as the audit log keeps it before and after."""
    return {"review_status": case.review_status, "violation": case.violation, "matter_code": case.matter_code,
            "reason": case.review_reason, "boxes": case.review_boxes, "note": case.review_note,
            "load": case.review_load}


def check_boxes(boxes: list[list[float]] | None,
                frame: tuple[int, int] | None = None) -> list[list[float]] | None:
    """The reviewer's boxes, cut to the frame (width, height) they were drawn on; a box not
    finite, absurd, or wholly outside the frame is refused (422)."""
    if boxes is None:
        return None
    if len(boxes) > 50:
        raise CaseError("at most 50 boxes", status=422)
    width, height = frame if frame is not None else (None, None)
    try:
        clipped = [clip_box(b, width, height, what=f"boxes[{i}]") for i, b in enumerate(boxes)]
    except BoxError as exc:
        raise CaseError(str(exc), status=422) from None
    return [[round(v, 1) for v in b] for b in clipped]


def has_load_decision(taxonomy: Taxonomy, violation: str | None) -> bool:
    entry = taxonomy.by_id.get(violation) if violation else None
    return entry is not None and entry.second_stage == LOAD_DECISION


def check_decision(case: Case, action: str, taxonomy: Taxonomy, violation: str | None, reason: str,
                   load_label: str | None = None) -> None:
    """What a decision may say, before anything changes (422s)."""
    if action not in REVIEW_ACTIONS:
        raise CaseError(f"unknown review action {action!r}", status=422)
    if reason and (action != "reject" or reason not in REJECT_REASONS):
        raise CaseError(f"a reason goes with reject and is one of {', '.join(REJECT_REASONS)}", status=422)
    if action == "correct":
        if violation is None or violation not in taxonomy:
            raise CaseError("correct needs a known 'violation'", status=422)
        if violation == case.violation:
            # Before and after would be the same: not a correction (confirm it instead).
            raise CaseError(f"case {case.case_number} already is {violation}; "
                            "correct needs a different violation (or confirm it)", status=422)
    if load_label is not None:
        if load_label not in REVIEW_LOADS:
            raise CaseError(f"unknown load_label {load_label!r} (one of {', '.join(REVIEW_LOADS)})", status=422)
        final = violation if action == "correct" else case.violation
        if not has_load_decision(taxonomy, final):
            raise CaseError(f"case {case.case_number} is {final}: a load_label goes with a truck load case "
                            "(a violation with the load decision)", status=422)


def conflict_of(case: Case, holder: str, version: int | None, *, now: datetime,
                decided_ok: bool = False) -> DecisionConflict | None:
    """Why `holder` may not decide `case` at `now` (the service's clock), or None. `decided_ok`:
    a re-decision, which needs the case decided instead of pending."""
    kwargs = {"version": case.version, "review_status": case.review_status}
    if held_by_other(case, holder, now):
        return DecisionConflict(f"case {case.case_number} is being reviewed by {case.leased_by}",
                                holder=case.leased_by, **kwargs)
    if not decided_ok and case.review_status != "pending":
        return DecisionConflict(f"case {case.case_number} was already decided ({case.review_status}) by "
                                f"{case.reviewed_by or 'someone'}; to change it, re-decide it with a reason",
                                holder=case.reviewed_by, **kwargs)
    if decided_ok and case.review_status == "pending":
        return DecisionConflict(f"case {case.case_number} has no decision to change; review it",
                                holder="", **kwargs)
    if version is not None and version != case.version:
        return DecisionConflict(f"case {case.case_number} changed: it is at version {case.version}, "
                                f"the decision was made on version {version}",
                                holder=case.reviewed_by or case.leased_by, **kwargs)
    return None


def apply_review(session, case: Case, action: str, taxonomy: Taxonomy, base_url: str, *,  # noqa: ANN001
                 reviewer: str = "", note: str = "", violation: str | None = None, reason: str = "",
                 boxes: list[list[float]] | None = None, frame: tuple[int, int] | None = None,
                 load_label: str | None = None) -> None:
    """A reviewer's decision. What was already sent is followed by an update or a retraction;
    a first confirmation reports the case. `reason` says why a case was rejected; `boxes`
    are the reviewer's own boxes (None leaves the detection's box as the answer), cut to the
    evidence `frame` (width, height) when its size is known. `load_label`: what the reviewer
    said a truck's load was; None keeps what was said before (a re-decision from a form that
    does not ask it must not lose it), unless the case is no longer a truck load case."""
    check_decision(case, action, taxonomy, violation, reason, load_label)
    case.review_boxes = check_boxes(boxes, frame)
    case.review_reason = reason
    was_queued = case.version > 0
    if action == "correct":
        entry = taxonomy[violation]
        case.violation = violation
        case.matter_code = (case.division or case.matter_code[:6]) + entry.matter_code
        case.matter_name = entry.name_zh
        case.legacy_code = entry.legacy_code
        case.review_status = "corrected"
    else:
        case.review_status = "confirmed" if action == "confirm" else "rejected"
    if load_label is not None:
        case.review_load = load_label
    elif not has_load_decision(taxonomy, case.violation):
        case.review_load = None  # corrected away from a truck load case
    case.review_note = note[:2000]
    case.reviewed_by = reviewer[:64]
    case.updated_at = case.reviewed_at = datetime.now(timezone.utc)
    if action == "reject":
        if was_queued:
            queue_version(session, case, "case.retracted", base_url)
    else:
        queue_version(session, case, "case.updated" if was_queued else "case.reported", base_url)


def apply_status(case: Case, status: str, external_id: str = "") -> None:
    """Progress reported by the case system: forward only."""
    if status not in STATUS_ORDER:
        raise CaseError(f"unknown status {status!r}", status=422)
    if STATUS_ORDER[status] < STATUS_ORDER[case.status]:
        raise CaseError(f"case {case.case_number} is {case.status}; cannot go back to {status}")
    case.status = status
    if external_id:
        case.external_id = external_id[:128]
    case.updated_at = datetime.now(timezone.utc)


def restore_review(session, case: Case, before: dict, taxonomy: Taxonomy, base_url: str, *,  # noqa: ANN001
                   deliverable: Callable[[Case], bool]) -> None:
    """Undo: the case's review as it was before a decision (`before`, the decision's audit
    snapshot). What the case system was sent is followed by a new version: an update if
    the case still goes out without that decision (auto-confirm), else a retraction."""
    violation = before.get("violation") or case.violation
    entry = taxonomy.by_id.get(violation)
    case.violation = violation
    case.matter_code = before.get("matter_code") or case.matter_code
    if entry is not None:
        case.matter_name, case.legacy_code = entry.name_zh, entry.legacy_code
    case.review_status = before.get("review_status") or "pending"
    case.review_reason = before.get("reason") or ""
    case.review_boxes = before.get("boxes")
    case.review_note = before.get("note") or ""
    case.review_load = before.get("load")
    if case.review_status == "pending":
        case.reviewed_by, case.reviewed_at = "", None
    case.updated_at = datetime.now(timezone.utc)
    if case.version > 0:
        queue_version(session, case, "case.updated" if deliverable(case) else "case.retracted", base_url)
