"""The served model's history (weights/history/events.jsonl) in the service's audit log.

`gridwatch models promote` and `gridwatch models rollback` run on the host without a service
and record who put which model in service and why in the model folder's history (written by
training/promotion/model_history.py; this reader keeps the serving path free of the training
code). The service copies every history event it has not audited yet into its audit table:
when it starts and whenever a model goes live (the file watcher or POST /v1/models/reload),
so a forced promotion or a rollback is in the audit log as soon as a service runs on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from serving.audit import Actor, record
from serving.store.db import Database
from serving.store.models import AuditEntry

log = logging.getLogger("gridwatch.model")

EVENTS = Path("history") / "events.jsonl"  # beside the served model file
ACTIONS = {"promote": "model.promote", "rollback": "model.rollback"}


@dataclass(frozen=True)
class HistoryEvent:
    """One line of events.jsonl: a promotion or rollback, as the CLI recorded it."""

    at: str
    action: str
    version: str
    replaced: str | None
    by: str
    reason: str


def read_events(model_dir: Path) -> list[HistoryEvent]:
    """The history's events in order; lines that are not an event are logged and skipped
    (the history is a file on the host, anyone may have edited it)."""
    path = Path(model_dir) / EVENTS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read the model history %s: %s", path, exc)
        return []
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            found.append(HistoryEvent(at=str(data["at"]), action=str(data["action"]), version=str(data["version"]),
                                      replaced=None if data.get("replaced") is None else str(data["replaced"]),
                                      by=str(data.get("by") or "unknown"), reason=str(data.get("reason") or "")))
        except (ValueError, KeyError, TypeError):
            log.warning("%s line %d is not a history event; skipped", path, number)
    return [e for e in found if e.action in ACTIONS]


def audit_history(db: Database, model_dir: Path) -> int:
    """Write an audit row for each history event not audited yet; returns how many."""
    events = read_events(model_dir)
    if not events:
        return 0
    with db.transaction() as session:
        rows = session.scalars(select(AuditEntry.after).where(AuditEntry.action.in_(ACTIONS.values()))).all()
        audited = {(row or {}).get("at") for row in rows}
        fresh = [e for e in events if e.at not in audited]
        for event in fresh:
            # The person who ran the CLI on the host, by their login name: not an API key or a user.
            who = Actor("cli", event.by[:64], event.by)
            record(session, event.by, ACTIONS[event.action], f"model:{event.version}",
                   {"version": event.replaced} if event.replaced else None,
                   {"version": event.version, "reason": event.reason[:500], "at": event.at,
                    "source": str(EVENTS)}, who)
    for event in fresh:
        log.info("model history: %s %s by %s (%s) audited", event.action, event.version, event.by, event.reason)
    return len(fresh)
