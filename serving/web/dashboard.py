"""The dashboard's figures, computed from the case, outbox and audit tables and the
stream readers' health; the page draws them with uPlot."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

from sqlalchemy import func, select

from serving.cases.recheck import recheck_counts
from serving.cases.thresholds import history, in_force
from serving.delivery import outbox_stats
from serving.store.db import Database
from serving.store.models import AuditEntry, Case, OutboxMessage, Recheck

REVIEWED = ("confirmed", "corrected", "rejected")
CONFIRMED = ("confirmed", "corrected")


def cases_per_day(db: Database, zone: tzinfo = timezone.utc) -> dict[str, Any]:
    """{"days": [...], "series": {violation: [count per day]}}, days in `zone` (the service's
    local zone on the page: a case at 07:00 Beijing time is that day's, not the day before's)."""
    with db.sessions() as session:
        rows = session.execute(select(Case.first_seen, Case.violation)).all()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for first_seen, violation in rows:
        counts[violation][first_seen.astimezone(zone).date().isoformat()] += 1
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


def dashboard_data(db: Database, health: dict[str, dict[str, Any]], stats: dict[str, int],
                   zone: tzinfo = timezone.utc) -> dict[str, Any]:
    return {"per_day": cases_per_day(db, zone), "backlog": backlog(db),
            "precision_by_violation": precision(db, Case.violation), "precision_by_camera": precision(db, Case.camera),
            "latency_s": latencies(db), "delivery": delivery(db), "cameras": camera_health(health),
            "pipeline": stats, "rechecks": recheck_counts(db),
            "thresholds": {"in_force": in_force(db), "history": history(db)}}


# -- 综合评价: the indicators of GB/T 30428.4 (数字化城市管理信息系统 绩效评价) the data has ----------
SILENT = ("duplicate", "bad_image")  # rejections that are not the detector's false alarms
EVALUATION_COLUMNS = ("found", "confirmed", "reviewed", "false_alarms", "false_alarm_rate", "to_handle", "handled",
                      "handled_on_time", "on_time_rate", "recheck_passed", "recheck_reopened")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def evaluation(db: Database, zones: Any, since: date | None, until: date | None,
               deadline_h: float = 24.0) -> dict[str, Any]:
    """Per grid unit and per division, cases first seen in [since, until] (local days):
    found (发现), confirmed by review or sent unreviewed (确认立案), false-alarm rate (误报率:
    rejected as false alarm or not a violation, over decided), handled within `deadline_h` of
    the case (按期处置; the first "handled" report), re-checks passed (核查通过) and reopened
    (返工); and per reviewer the decisions in the period and per active hour (工作量)."""
    start = datetime.combine(since, datetime.min.time(), zones.default) if since else None
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), zones.default) if until else None
    query = select(Case.id, Case.grid, Case.division, Case.review_status, Case.review_reason, Case.created_at,
                   Case.status)
    audit_query = select(AuditEntry.actor, AuditEntry.at).where(AuditEntry.action.like("review.%"))
    if start is not None:
        query = query.where(Case.first_seen >= start.astimezone(timezone.utc))
        audit_query = audit_query.where(AuditEntry.at >= start.astimezone(timezone.utc))
    if end is not None:
        query = query.where(Case.first_seen < end.astimezone(timezone.utc))
        audit_query = audit_query.where(AuditEntry.at < end.astimezone(timezone.utc))
    with db.sessions() as session:
        cases = session.execute(query).all()
        looks = session.execute(select(Recheck.case_id, Recheck.handled_at, Recheck.state).order_by(Recheck.id)).all()
        decisions = session.execute(audit_query).all()
    first_handled: dict[int, datetime] = {}
    states: dict[int, list[str]] = defaultdict(list)
    for case_id, handled_at, state in looks:
        first_handled.setdefault(case_id, handled_at)
        states[case_id].append(state)
    deadline = timedelta(hours=deadline_h)

    def blank() -> dict[str, int]:
        return dict.fromkeys(EVALUATION_COLUMNS, 0)

    by_grid: dict[str, dict[str, Any]] = defaultdict(blank)
    by_division: dict[str, dict[str, Any]] = defaultdict(blank)
    for case_id, grid, division, review, reason, created, status in cases:
        counted = review in CONFIRMED or (review == "pending" and status != "new")
        false_alarm = review == "rejected" and reason not in SILENT
        handled = first_handled.get(case_id)
        for row in (by_grid[grid or "-"], by_division[division or "-"]):
            row["found"] += 1
            row["confirmed"] += counted
            row["reviewed"] += review in CONFIRMED or false_alarm
            row["false_alarms"] += false_alarm
            row["to_handle"] += counted
            row["handled"] += handled is not None
            row["handled_on_time"] += handled is not None and handled - created <= deadline
            row["recheck_passed"] += "verified" in states.get(case_id, [])
            row["recheck_reopened"] += states.get(case_id, []).count("reopened")
    for table in (by_grid, by_division):
        for row in table.values():
            row["false_alarm_rate"] = _rate(row["false_alarms"], row["reviewed"])
            row["on_time_rate"] = _rate(row["handled_on_time"], row["to_handle"])
    hours: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for actor, at in decisions:
        counts[actor] += 1
        hours[actor].add(zones.local(at, None).strftime("%Y-%m-%d %H"))
    return {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
            "deadline_h": deadline_h,
            "grids": [{"key": k, **v} for k, v in sorted(by_grid.items())],
            "divisions": [{"key": k, **v} for k, v in sorted(by_division.items())],
            "reviewers": [{"reviewer": a, "decisions": n, "active_hours": len(hours[a]),
                           "per_hour": round(n / len(hours[a]), 1)} for a, n in sorted(counts.items())]}


def evaluation_csv(report: dict[str, Any], t: dict[str, str]) -> str:
    """The evaluation as CSV, headers in the page's language, with a UTF-8 byte-order mark:
    without it Excel and WPS read the Chinese as mojibake."""
    out = io.StringIO()
    writer = csv.writer(out)
    heads = [t["found"], t["confirmed_n"], t["reviewed"], t["false_alarm"], t["false_alarm_rate"], t["to_handle"],
             t["handled"], t["handled_on_time"], t["on_time"], t["recheck_passed_n"], t["recheck_reopened_n"]]
    writer.writerow([t["from"], report["since"] or "", t["to"], report["until"] or "", "deadline_h", report["deadline_h"]])
    for title, key, rows in ((t["by_grid"], t["grid"], report["grids"]), (t["by_division"], t["division"], report["divisions"])):
        writer.writerow([])
        writer.writerow([title])
        writer.writerow([key, *heads])
        for r in rows:
            writer.writerow([r["key"], *("" if r[c] is None else r[c] for c in EVALUATION_COLUMNS)])
    writer.writerow([])
    writer.writerow([t["reviewers"]])
    writer.writerow([t["reviewer"], t["decisions"], t["active_hours"], t["per_hour"]])
    for r in report["reviewers"]:
        writer.writerow([r["reviewer"], r["decisions"], r["active_hours"], r["per_hour"]])
    return "\ufeff" + out.getvalue()
