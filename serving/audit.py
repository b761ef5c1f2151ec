"""The audit log: who did what, when, and the record before and after.

Rows are written in the transaction that made the change, so a change and its audit entry
commit together; nothing here updates or deletes one."""

from __future__ import annotations

import csv
import io
import json
from contextvars import ContextVar
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.store.db import Database
from serving.store.models import AuditEntry

CSV_COLUMNS = ("id", "at", "actor", "action", "target", "before", "after", "actor_kind", "actor_id")


@dataclass(frozen=True)
class Actor:
    """Who acts, beyond a name: a signed-in `user` or an API `key` with its id, or `system`."""

    kind: str
    id: str
    name: str


SYSTEM = Actor("system", "", "system")
# Set by the request gate (serving/api/guard.py) once it knows the caller, so every audit row a
# request writes carries the caller's kind and id, whatever service function wrote it.
current_actor: ContextVar[Actor] = ContextVar("gridwatch_actor", default=SYSTEM)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    actor_kind: str = "system"
    actor_id: str = ""

    @classmethod
    def of(cls, row: AuditEntry) -> AuditRecord:
        return cls(row.id, row.at, row.actor, row.action, row.target, row.before, row.after,
                   row.actor_kind or "system", row.actor_id or "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "target": self.target, "before": self.before, "after": self.after,
                "actor_kind": self.actor_kind, "actor_id": self.actor_id}


def record(session: Session, actor: str, action: str, target: str,
           before: dict[str, Any] | None, after: dict[str, Any] | None,
           who: Actor | None = None) -> None:
    """`who`: who acted; default the request's caller (`current_actor`)."""
    who = who or current_actor.get()
    session.add(AuditEntry(actor=actor[:64], action=action[:32], target=target[:160], before=before, after=after,
                           actor_kind=who.kind, actor_id=who.id[:64]))


def record_alone(db: Database, actor: str, action: str, target: str, after: dict[str, Any] | None = None,
                 who: Actor | None = None) -> None:
    """An entry for something that changed nothing (a refused or failed attempt, a sign-in),
    in its own transaction."""
    with db.transaction() as session:
        record(session, actor, action, target, None, after, who)


@dataclass(frozen=True)
class AuditQuery:
    """Which entries an audit view shows, so that nothing is out of reach however many
    entries came after it: by actor, action (`review.*`: every action starting `review.`),
    case, target, and time [since, until); paged newest first by `before` (an entry id)."""

    actor: str | None = None
    action: str | None = None
    case: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None

    def apply(self, query):  # noqa: ANN001, ANN201
        if self.target is not None:
            query = query.where(AuditEntry.target == self.target)
        if self.case:
            query = query.where(AuditEntry.target == f"case:{self.case}")
        if self.actor:
            query = query.where(AuditEntry.actor == self.actor)
        if self.action:
            if self.action.endswith("*"):
                prefix = self.action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                query = query.where(AuditEntry.action.like(prefix + "%", escape="\\"))
            else:
                query = query.where(AuditEntry.action == self.action)
        if self.since is not None:
            query = query.where(AuditEntry.at >= self.since)
        if self.until is not None:
            query = query.where(AuditEntry.at < self.until)
        if self.before is not None:
            query = query.where(AuditEntry.id < self.before)
        return query


def entries(db: Database, *, target: str | None = None, actor: str | None = None,
            limit: int = 500, where: AuditQuery | None = None) -> list[AuditRecord]:
    """Newest first; `where` filters and pages (target and actor: shorthands)."""
    query = (where or AuditQuery()).apply(select(AuditEntry))
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    with db.sessions() as session:
        rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()
    return [AuditRecord.of(r) for r in rows]


def page(db: Database, where: AuditQuery, limit: int) -> tuple[list[AuditRecord], int | None]:
    """One page of `where`, newest first, and the `before` of the next (older) page, if any."""
    records = entries(db, where=where, limit=limit + 1)
    return records[:limit], (records[limit - 1].id if len(records) > limit else None)


def csv_chunks(db: Database, where: AuditQuery, chunk: int = 1000) -> Iterator[str]:
    """Every entry `where` selects as CSV, newest first, read a chunk at a time so an export
    of any size streams in bounded memory."""
    yield to_csv([])
    before = where.before
    while True:
        records = entries(db, where=replace(where, before=before), limit=chunk)
        if not records:
            return
        yield to_csv(records, header=False)
        before = records[-1].id


def to_csv(records: list[AuditRecord], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r.id, r.at.isoformat(), r.actor, r.action, r.target,
                         json.dumps(r.before, ensure_ascii=False, sort_keys=True),
                         json.dumps(r.after, ensure_ascii=False, sort_keys=True), r.actor_kind, r.actor_id])
    return out.getvalue()
