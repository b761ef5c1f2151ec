"""What people and the case system do to a case: review it, and report its progress."""

from __future__ import annotations

from datetime import datetime, timezone

from detector.taxonomy import Taxonomy
from serving.cases.outbox import queue_version
from serving.cases.policy import STATUS_ORDER, CaseError
from serving.store.models import REJECT_REASONS, Case

REVIEW_ACTIONS = ("confirm", "correct", "reject")


def review_snapshot(case: Case) -> dict:
    """What a review can change, as the audit log keeps it before and after."""
    return {"review_status": case.review_status, "violation": case.violation, "matter_code": case.matter_code,
            "reason": case.review_reason, "boxes": case.review_boxes, "note": case.review_note}


def check_boxes(boxes: list[list[float]] | None) -> list[list[float]] | None:
    if boxes is None:
        return None
    if len(boxes) > 50 or any(len(b) != 4 or not (0 <= b[0] < b[2] and 0 <= b[1] < b[3]) for b in boxes):
        raise CaseError("boxes must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2, at most 50", status=422)
    return [[round(float(v), 1) for v in b] for b in boxes]


def apply_review(session, case: Case, action: str, taxonomy: Taxonomy, base_url: str, *,  # noqa: ANN001
                 reviewer: str = "", note: str = "", violation: str | None = None, reason: str = "",
                 boxes: list[list[float]] | None = None) -> None:
    """A reviewer's decision. What was already sent is followed by an update or a retraction;
    a first confirmation reports the case. `reason` says why a case was rejected; `boxes`
    are the reviewer's own boxes (None leaves the detection's box as the answer)."""
    if action not in REVIEW_ACTIONS:
        raise CaseError(f"unknown review action {action!r}", status=422)
    if reason and (action != "reject" or reason not in REJECT_REASONS):
        raise CaseError(f"a reason goes with reject and is one of {', '.join(REJECT_REASONS)}", status=422)
    case.review_boxes = check_boxes(boxes)
    case.review_reason = reason
    was_queued = case.version > 0
    if action == "correct":
        if violation is None or violation not in taxonomy:
            raise CaseError("correct needs a known 'violation'", status=422)
        entry = taxonomy[violation]
        case.violation = violation
        case.matter_code = (case.division or case.matter_code[:6]) + entry.matter_code
        case.matter_name = entry.name_zh
        case.legacy_code = entry.legacy_code
        case.review_status = "corrected"
    else:
        case.review_status = "confirmed" if action == "confirm" else "rejected"
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
