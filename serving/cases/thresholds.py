"""Thresholds that hold a precision: each camera x violation's alert and auto-confirm scores,
fitted to what reviewers decided about its cases.

A reviewed case is one decision: the score it was raised at (`cases.score`, the median
track score the rules compared) and whether it was right. Confirmed and corrected cases are
right (a violation was there; a correction changes only its kind), rejected ones wrong,
except rejections as a duplicate or a bad image, which say nothing about the score and are
left out. The decision counts for the violation as detected, before any correction.

Once a pair has `min_reviews` decisions (of its latest `window`), after each new one:

- the alert threshold is the lowest reviewed score t at which the decisions scored >= t
  reach `target_precision` (default 0.90), clamped to [floor, ceiling]; when no score
  reaches it, the ceiling. Only reviewed scores are candidates: below the lowest one there
  is no evidence, so the threshold never moves below what reviewers have seen.
- the auto-confirm threshold is the same arithmetic at `auto_confirm_precision` (default
  0.97): a case sent without a reviewer must be right more often than one shown to a
  reviewer. It applies only to violations the operator set an auto_confirm score for
  (settings.auto_confirm): learning moves a bar, it never starts sending unreviewed cases.

The pipeline's rules use the alert threshold in place of the rule's `min_score`, the case
policy the auto-confirm one in place of settings.auto_confirm; every change is a row of
`threshold_history` and an entry in the audit log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from serving.audit import record
from serving.health import Faults, held_fault
from serving.settings import ThresholdSettings
from serving.store.db import Database
from serving.store.models import Case, Threshold, ThresholdChange, ThresholdDecision

log = logging.getLogger("gridwatch.cases")

ACTOR = "thresholds"
SILENT_REASONS = ("duplicate", "bad_image")  # rejections that say nothing about the score


@dataclass(frozen=True)
class Decision:
    score: float
    correct: bool


def decision_of(review_status: str, reason: str) -> bool | None:
    """Whether a review says the case was right; None: it says nothing about the score."""
    if review_status in ("confirmed", "corrected"):
        return True
    if review_status == "rejected" and reason not in SILENT_REASONS:
        return False
    return None


def precision_at(decisions: Sequence[Decision], threshold: float) -> float | None:
    above = [d for d in decisions if d.score >= threshold]
    return sum(d.correct for d in above) / len(above) if above else None


def fit_threshold(decisions: Sequence[Decision], target: float, floor: float, ceiling: float,
                  min_reviews: int) -> float | None:
    """The lowest reviewed score at which precision reaches `target`, within [floor, ceiling];
    None with fewer than `min_reviews` decisions (the setting in force stays)."""
    if len(decisions) < min_reviews:
        return None
    for score in sorted({d.score for d in decisions}):
        reached = precision_at(decisions, score)
        if reached is not None and reached >= target:
            return round(min(ceiling, max(floor, score)), 4)
    return ceiling


@dataclass(frozen=True)
class Fitted:
    confirmed: int
    rejected: int
    alert: float | None
    auto_confirm: float | None
    precision_at_alert: float | None


def fit(decisions: Sequence[Decision], config: ThresholdSettings) -> Fitted:
    alert = fit_threshold(decisions, config.target_precision, config.floor, config.ceiling, config.min_reviews)
    auto = fit_threshold(decisions, config.auto_confirm_precision, config.floor, config.ceiling, config.min_reviews)
    reached = precision_at(decisions, alert) if alert is not None else None
    return Fitted(confirmed=sum(d.correct for d in decisions), rejected=sum(not d.correct for d in decisions),
                  alert=alert, auto_confirm=auto, precision_at_alert=round(reached, 4) if reached is not None else None)


class ThresholdBook:
    """The thresholds in force, read by the pipeline's rules, the case policy and the
    re-checks. Readers only look at the last snapshot read (an immutable mapping, replaced
    whole): the rules ask on every analysed frame, and a frame must never wait on the
    database. The snapshot is read at construction, again after a change made here
    (`invalidate`, on the reviewer's thread once the review committed), and, once `start()`ed,
    every `refresh_s` by a thread of its own (another process on the same database may have
    moved them)."""

    def __init__(self, db: Database, config: ThresholdSettings, refresh_s: float = 10.0,
                 faults: Faults | None = None) -> None:
        """`faults`: the service's; a read the database refuses enters its fault (one line
        per outage) rather than a warning every `refresh_s`."""
        self.db = db
        self.faults = faults
        self.config = config
        self.refresh_s = refresh_s
        self._lock = threading.Lock()  # one read at a time; readers never take it
        self._values: Mapping[tuple[str, str], tuple[float | None, float | None]] = MappingProxyType({})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if config.enabled:
            self.refresh()

    def alert(self, camera: str, violation: str) -> float | None:
        return self._get(camera, violation)[0]

    def auto_confirm(self, camera: str, violation: str) -> float | None:
        return self._get(camera, violation)[1]

    def alerts_for(self, cameras: Iterable[str]) -> dict[str, dict[str, float]]:
        """camera -> violation -> learned alert threshold, for these cameras (what a cluster
        worker's rules need; it has no database of its own to ask)."""
        if not self.config.enabled:
            return {}
        wanted = set(cameras)
        out: dict[str, dict[str, float]] = {}
        for (camera, violation), (alert, _) in self._values.items():
            if camera in wanted and alert is not None:
                out.setdefault(camera, {})[violation] = alert
        return out

    def invalidate(self) -> None:
        """A change committed here: read the thresholds again now (not on a frame's time)."""
        if self.config.enabled:
            self.refresh()

    def _get(self, camera: str, violation: str) -> tuple[float | None, float | None]:
        if not self.config.enabled:
            return None, None
        return self._values.get((camera, violation), (None, None))

    # -- read from the database, never on a reader's time --------------------------------------
    def refresh(self) -> bool:
        """Read the thresholds and publish them as the new snapshot; False (the last ones stay
        in force) when the database refuses."""
        with self._lock:
            try:
                with self.db.sessions() as session:
                    rows = session.execute(select(Threshold.camera, Threshold.violation, Threshold.alert,
                                                  Threshold.auto_confirm)).all()
            except SQLAlchemyError as exc:
                fault = held_fault(exc) if self.faults is not None else None
                if fault is not None:
                    self.faults.enter(*fault)
                else:
                    log.warning("thresholds not read again, the last ones stay in force: %s", type(exc).__name__)
                return False
            self._values = MappingProxyType({(c, v): (a, ac) for c, v, a, ac in rows})
            return True

    def start(self) -> None:
        """Read again every `refresh_s` in a background thread, until stop()."""
        if self._thread is not None or not self.config.enabled or self.refresh_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh_loop, name="gridwatch-thresholds", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a bad read must not end the refreshing for good
                log.exception("thresholds not read again")

    # -- written with each review ------------------------------------------------------------
    def record(self, session: Session, case: Case, detected_violation: str) -> ThresholdChange | None:
        """In the review's transaction: the case's decision (replacing an earlier one of the
        same case), then the pair's thresholds fitted again; a change is kept in the history
        and the audit log."""
        correct = decision_of(case.review_status, case.review_reason)
        row = session.get(ThresholdDecision, case.id)
        violation = row.violation if row is not None else detected_violation
        if correct is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(ThresholdDecision(case_id=case.id, camera=case.camera, violation=violation, score=case.score,
                                          correct=correct, decided_at=datetime.now(timezone.utc)))
        else:
            row.correct, row.decided_at = correct, datetime.now(timezone.utc)
        session.flush()
        return self._refit(session, case.camera, violation)

    def _refit(self, session: Session, camera: str, violation: str) -> ThresholdChange | None:
        rows = session.execute(
            select(ThresholdDecision.score, ThresholdDecision.correct)
            .where(ThresholdDecision.camera == camera, ThresholdDecision.violation == violation)
            .order_by(ThresholdDecision.decided_at.desc(), ThresholdDecision.case_id.desc())
            .limit(self.config.window)).all()
        fitted = fit([Decision(float(s), bool(c)) for s, c in rows], self.config)
        current = session.get(Threshold, (camera, violation))
        if current is None:
            current = Threshold(camera=camera, violation=violation, confirmed=0, rejected=0)
            session.add(current)
        before = {"alert": current.alert, "auto_confirm": current.auto_confirm}
        current.confirmed, current.rejected = fitted.confirmed, fitted.rejected
        if not self.config.enabled or fitted.alert is None:
            return None  # too few reviews (or learning off): the configured scores stay
        after = {"alert": fitted.alert, "auto_confirm": fitted.auto_confirm}
        if after == before:
            return None
        current.alert, current.auto_confirm = fitted.alert, fitted.auto_confirm
        change = ThresholdChange(at=datetime.now(timezone.utc), camera=camera, violation=violation,
                                 confirmed=fitted.confirmed, rejected=fitted.rejected, alert=fitted.alert,
                                 auto_confirm=fitted.auto_confirm, precision_at_alert=fitted.precision_at_alert)
        session.add(change)
        record(session, ACTOR, "threshold.update", f"threshold:{camera}/{violation}", before,
               {**after, "confirmed": fitted.confirmed, "rejected": fitted.rejected,
                "precision_at_alert": fitted.precision_at_alert, "target": self.config.target_precision})
        return change  # the caller invalidates the book once this transaction has committed


def history(db: Database, limit: int = 500) -> list[dict]:
    """The latest changes, oldest first, for the dashboard."""
    with db.sessions() as session:
        rows = session.scalars(select(ThresholdChange).order_by(ThresholdChange.id.desc()).limit(limit)).all()
    return [{"at": r.at.isoformat(), "camera": r.camera, "violation": r.violation, "confirmed": r.confirmed,
             "rejected": r.rejected, "alert": r.alert, "auto_confirm": r.auto_confirm,
             "precision_at_alert": r.precision_at_alert} for r in reversed(rows)]


def in_force(db: Database) -> list[dict]:
    with db.sessions() as session:
        rows = session.scalars(select(Threshold).order_by(Threshold.camera, Threshold.violation)).all()
    return [{"camera": r.camera, "violation": r.violation, "confirmed": r.confirmed, "rejected": r.rejected,
             "alert": r.alert, "auto_confirm": r.auto_confirm} for r in rows]
