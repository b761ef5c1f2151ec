"""Reading cases: one by number, or pages in the order they last changed."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from serving.cases.policy import CaseError
from serving.store.models import Case


@dataclass(frozen=True)
class CaseFilter:
    camera: str | None = None
    violation: str | None = None
    review_status: str | None = None
    status: str | None = None
    state: str | None = None
    since: datetime | None = None  # changed after this time
    delivered_only: bool = False  # what the case system was sent


def find_case(session: Session, case_number: str) -> Case | None:
    return session.scalars(
        select(Case).options(selectinload(Case.evidence)).where(Case.case_number == case_number)
    ).one_or_none()


def page_of_cases(session: Session, where: CaseFilter, cursor: str | None, limit: int) -> tuple[list[Case], str | None]:
    """Cases in the order they last changed (updated_at, id): a poller keeps the last
    cursor (or the newest updated_at as `since`) and asks again."""
    query = select(Case).options(selectinload(Case.evidence))
    for column, value in ((Case.camera, where.camera), (Case.violation, where.violation),
                          (Case.review_status, where.review_status), (Case.status, where.status),
                          (Case.state, where.state)):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(Case.updated_at > where.since)
    if where.delivered_only:
        query = query.where(Case.version > 0)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        query = query.where((Case.updated_at > after_time)
                            | ((Case.updated_at == after_time) & (Case.id > after_id)))
    rows = session.scalars(query.order_by(Case.updated_at, Case.id).limit(limit + 1)).all()
    next_cursor = encode_cursor(rows[limit - 1].updated_at, rows[limit - 1].id) if len(rows) > limit else None
    return list(rows[:limit]), next_cursor


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
