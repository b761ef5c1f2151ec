"""The dashboard's figures, computed from the case, outbox and audit tables and the
stream readers' health; the page draws them with uPlot."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select

from serving.cases.recheck import recheck_counts
from serving.cases.thresholds import history, in_force
from serving.delivery import outbox_stats
from serving.store.db import Database
from serving.store.models import Case, OutboxMessage

REVIEWED = ("confirmed", "corrected", "rejected")
CONFIRMED = ("confirmed", "corrected")


def cases_per_day(db: Database) -> dict[str, Any]:
    """{"days": [...], "series": {violation: [count per day]}}, days in UTC."""
    with db.sessions() as session:
        rows = session.execute(select(Case.first_seen, Case.violation)).all()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for first_seen, violation in rows:
        counts[violation][first_seen.date().isoformat()] += 1
    days = sorted({day for per in counts.values() for day in per})
    return {"days": days, "series": {v: [per.get(d, 0) for d in days] for v, per in sorted(counts.items())}}


def precision(db: Database, column: Any) -> list[dict[str, Any]]:
    """Confirmed (or corrected) over reviewed, per value of `column`."""
    with db.sessions() as session:
        rows = session.execute(select(column, Case.review_status, func.count())
                               .where(Case.review_status.in_(REVIEWED)).group_by(column, Case.review_status)).all()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, status, n in rows:
        totals[key][1] += n
        if status in CONFIRMED:
            totals[key][0] += n
    return [{"key": k, "confirmed": c, "reviewed": r, "precision": round(c / r, 3)}
            for k, (c, r) in sorted(totals.items())]


def _median_s(pairs: list[tuple[datetime, datetime | None]]) -> float | None:
    spans = [(end - start).total_seconds() for start, end in pairs if end is not None]
    return round(statistics.median(spans), 1) if spans else None


def latencies(db: Database) -> dict[str, float | None]:
    """Median seconds from first detection to the case, its review and its first delivery."""
    with db.sessions() as session:
        cases = session.execute(select(Case.first_seen, Case.created_at, Case.reviewed_at)).all()
        delivered = session.execute(
            select(Case.first_seen, func.min(OutboxMessage.delivered_at))
            .join(OutboxMessage, OutboxMessage.case_id == Case.id).group_by(Case.id, Case.first_seen)).all()
    return {"to_case": _median_s([(f, c) for f, c, _ in cases]),
            "to_review": _median_s([(f, r) for f, _, r in cases]),
            "to_delivery": _median_s(list(delivered))}


def backlog(db: Database) -> dict[str, Any]:
    with db.sessions() as session:
        count, oldest = session.execute(
            select(func.count(), func.min(Case.created_at)).where(Case.review_status == "pending")).one()
    age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
    return {"pending": count, "oldest_age_s": round(age, 1)}


def delivery(db: Database) -> dict[str, Any]:
    with db.sessions() as session:
        failed_tries = session.scalar(select(func.coalesce(func.sum(OutboxMessage.attempts), 0))
                                      .where(OutboxMessage.last_error != "")) or 0
    return {**outbox_stats(db), "failed_tries": int(failed_tries)}


def camera_health(health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What the stream readers report; the page turns frame counts into a rate per minute."""
    return [{"camera": cid, "online": bool(h.get("connected")), "state": h.get("state"),
             "last_frame": h.get("last_frame_wall"), "frames_sampled": h.get("frames_sampled", 0),
             "dropped": h.get("frames_dropped", 0), "errors": h.get("errors", 0),
             "reconnects": h.get("reconnects", 0)}
            for cid, h in sorted(health.items())]


def dashboard_data(db: Database, health: dict[str, dict[str, Any]], stats: dict[str, int]) -> dict[str, Any]:
    return {"per_day": cases_per_day(db), "backlog": backlog(db),
            "precision_by_violation": precision(db, Case.violation), "precision_by_camera": precision(db, Case.camera),
            "latency_s": latencies(db), "delivery": delivery(db), "cameras": camera_health(health),
            "pipeline": stats, "rechecks": recheck_counts(db),
            "thresholds": {"in_force": in_force(db), "history": history(db)}}
