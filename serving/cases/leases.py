"""Leases on pending cases, so two reviewers never work on the same case at once.

A lease is taken with one conditional UPDATE (free, expired, or already ours), which both
SQLite and PostgreSQL apply atomically; a decision or the timeout releases it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from serving.clock import SYSTEM_CLOCK, WallClock
from serving.store.models import Case


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows, and in which order."""

    order: Literal["oldest", "score"] = "oldest"
    camera: str | None = None
    violation: str | None = None
    grid: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_score: float | None = None


def _free_for(holder: str, now: datetime):  # noqa: ANN202
    return or_(Case.leased_by == "", Case.leased_by == holder, Case.lease_until.is_(None), Case.lease_until < now)


def claim(session: Session, holder: str, where: QueueFilter, skip: list[str], lease_s: float,
          clock: WallClock = SYSTEM_CLOCK) -> Case | None:
    """Lease the first pending case `where` selects that nobody else holds; None when none is left."""
    now = clock.now()
    longest = now + timedelta(seconds=lease_s)
    # A lease running past any length ever given was taken before the wall clock jumped back:
    # it ends `lease_s` from now instead of holding the case for the size of the jump.
    session.execute(update(Case).where(Case.lease_until > longest)
                    .values(lease_until=longest, updated_at=Case.updated_at)
                    .execution_options(synchronize_session=False))
    query = select(Case.id).where(Case.review_status == "pending", _free_for(holder, now))
    for column, value in ((Case.camera, where.camera), (Case.violation, where.violation), (Case.grid, where.grid)):
        if value:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(Case.first_seen >= where.since)
    if where.until is not None:
        query = query.where(Case.first_seen < where.until)
    if where.min_score is not None:
        query = query.where(Case.score >= where.min_score)
    if skip:
        query = query.where(Case.case_number.not_in(skip))
    order = (Case.score.desc(), Case.id) if where.order == "score" else (Case.first_seen, Case.id)
    # A few candidates: another reviewer may take the first between our SELECT and UPDATE.
    for case_id in session.scalars(query.order_by(*order).limit(5)).all():
        taken = session.execute(
            update(Case).where(Case.id == case_id, Case.review_status == "pending", _free_for(holder, now))
            # updated_at stays: a lease is not a change the case system polls for.
            .values(leased_by=holder, lease_until=longest, updated_at=Case.updated_at)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            return session.get(Case, case_id)
    return None


def renew(session: Session, holder: str, case_numbers: list[str], lease_s: float) -> int:
    """Extend `holder`'s leases on these cases (the page keeps the cases it shows and
    preloads); returns how many were still theirs."""
    if not case_numbers:
        return 0
    return session.execute(
        update(Case).where(Case.case_number.in_(case_numbers), Case.leased_by == holder,
                           Case.review_status == "pending")
        .values(lease_until=datetime.now(timezone.utc) + timedelta(seconds=lease_s), updated_at=Case.updated_at)
        .execution_options(synchronize_session=False)
    ).rowcount


def held_by_other(case: Case, holder: str) -> bool:
    now = datetime.now(timezone.utc)
    return bool(case.leased_by) and case.leased_by != holder and case.lease_until is not None and case.lease_until > now


def release(case: Case) -> None:
    case.leased_by = ""
    case.lease_until = None
