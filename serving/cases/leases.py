"""Leases on pending cases (and labelling items), so two reviewers never work on the same
one at once.

A lease is taken with one conditional UPDATE (free, expired, or already ours), which both
SQLite and PostgreSQL apply atomically; a decision or the timeout releases it. Any table
with `id`, `leased_by` and `lease_until` columns can be leased this way (`lease_first`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Select, or_, select, update
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


def held_by_other(row: Any, holder: str, now: datetime) -> bool:
    """A case or labelling item (or a row with their `leased_by` and `lease_until`) leased to
    someone other than `holder` at `now`: the one rule every lease check applies."""
    return bool(row.leased_by) and row.leased_by != holder and row.lease_until is not None and row.lease_until > now


def free_for(table: Any, holder: str, now: datetime):  # noqa: ANN201
    """`held_by_other`'s negation, as SQL: rows `holder` may lease or decide at `now`."""
    return or_(table.leased_by == "", table.leased_by == holder, table.lease_until.is_(None), table.lease_until <= now)


def lease_first(session: Session, table: Any, ids: Select, holder: str, lease_s: float, *still: Any,
                clock: WallClock = SYSTEM_CLOCK, **values: Any) -> int | None:
    """Lease the first row of `ids` (a SELECT of `table.id`, already filtered and ordered)
    that nobody else holds and that `still` matches at the moment of the UPDATE; its id, or None.
    `values`: other columns the lease sets (or keeps, such as a case's updated_at)."""
    now = clock.now()
    longest = now + timedelta(seconds=lease_s)
    # A lease running past any length ever given was taken before the wall clock jumped back:
    # it ends `lease_s` from now instead of holding the row for the size of the jump.
    session.execute(update(table).where(table.lease_until > longest).values(lease_until=longest, **values)
                    .execution_options(synchronize_session=False))
    # A few candidates: another reviewer may take the first between our SELECT and UPDATE.
    for row_id in session.scalars(ids.where(free_for(table, holder, now)).limit(5)).all():
        taken = session.execute(
            update(table).where(table.id == row_id, free_for(table, holder, now), *still)
            .values(leased_by=holder, lease_until=longest, **values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            return row_id
    return None


def filtered(query: Select, where: QueueFilter) -> Select:
    """`query` narrowed to the cases the queue filter selects."""
    for column, value in ((Case.camera, where.camera), (Case.violation, where.violation), (Case.grid, where.grid)):
        if value:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(Case.first_seen >= where.since)
    if where.until is not None:
        query = query.where(Case.first_seen < where.until)
    if where.min_score is not None:
        query = query.where(Case.score >= where.min_score)
    return query


def claim(session: Session, holder: str, where: QueueFilter, skip: list[str], lease_s: float,
          clock: WallClock = SYSTEM_CLOCK) -> Case | None:
    """Lease the first pending case `where` selects that nobody else holds; None when none is left."""
    query = filtered(select(Case.id).where(Case.review_status == "pending"), where)
    if skip:
        query = query.where(Case.case_number.not_in(skip))
    order = (Case.score.desc(), Case.id) if where.order == "score" else (Case.first_seen, Case.id)
    # updated_at stays: a lease is not a change the case system polls for.
    case_id = lease_first(session, Case, query.order_by(*order), holder, lease_s, Case.review_status == "pending",
                          clock=clock, updated_at=Case.updated_at)
    return None if case_id is None else session.get(Case, case_id)


def release(row: Any) -> None:
    row.leased_by = ""
    row.lease_until = None
