"""The audit log: who did what, when, and the record before and after.

Rows are written in the transaction that made the change, so a change and its audit entry
commit together; nothing here updates or deletes one."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.store.db import Database
from serving.store.models import AuditEntry

CSV_COLUMNS = ("id", "at", "actor", "action", "target", "before", "after")


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @classmethod
    def of(cls, row: AuditEntry) -> AuditRecord:
        return cls(row.id, row.at, row.actor, row.action, row.target, row.before, row.after)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "target": self.target, "before": self.before, "after": self.after}


def record(session: Session, actor: str, action: str, target: str,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    session.add(AuditEntry(actor=actor[:64], action=action[:32], target=target[:160], before=before, after=after))


def entries(db: Database, *, target: str | None = None, actor: str | None = None,
            limit: int = 500) -> list[AuditRecord]:
    """Newest first."""
    query = select(AuditEntry)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    with db.sessions() as session:
        rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()
    return [AuditRecord.of(r) for r in rows]


def to_csv(records: list[AuditRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r.id, r.at.isoformat(), r.actor, r.action, r.target,
                         json.dumps(r.before, ensure_ascii=False, sort_keys=True),
                         json.dumps(r.after, ensure_ascii=False, sort_keys=True)])
    return out.getvalue()
