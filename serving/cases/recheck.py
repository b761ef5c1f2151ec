"""Re-check (核查, step 6 of the city's case loop): once the case system reports a case handled,
the camera that saw the violation looks again at the case's place.

    handled (POST /v1/cases/{case}/status) -> plan(): due = handled + settings.recheck.delay_s,
        postponed into the camera's schedule; stored (table `rechecks`), so a restart keeps it
    due -> RecheckWorker: a fresh frame of the camera -> detector -> look_at_place()
        gone        -> the case is closed as verified, the "after" photo stored, `case.verified` sent
        still there -> the case is reopened, the "after" photo stored, `case.reopened` sent

Both outcomes go out through the outbox in the transaction that records them, so each is
reported exactly once (one case version, one Idempotency-Key), with the before and after
photos among the case's evidence. A look that cannot be made (camera offline, no frame) is
tried again `retry_s` later, `max_tries` times, then left `failed` for a person.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from detector.boxes import box_iou
from detector.detections import Detections
from detector.taxonomy import Taxonomy
from serving.audit import record
from serving.cameras import Camera, Rule
from serving.cameras.schedules import next_in_schedule
from serving.cases.outbox import queue_version
from serving.evidence import EvidenceFrame
from serving.health import Faults, held_fault
from serving.pipeline.rules import ActiveRule
from serving.settings import RecheckSettings
from serving.store.db import Database
from serving.store.models import RECHECK_STATES, Case, Recheck

log = logging.getLogger("gridwatch.recheck")

RecheckOutcome = Literal["verified", "reopened"]
ACTOR = "recheck"  # the audit log's actor for what the re-check decides


@dataclass(frozen=True)
class Look:
    """What the camera saw at the case's place: the best detection of the violation's
    classes overlapping the case's box, and whether it is sure enough to count."""

    still_there: bool
    score: float | None = None
    iou: float | None = None
    box: tuple[float, float, float, float] | None = None

    @property
    def outcome(self) -> RecheckOutcome:
        return "reopened" if self.still_there else "verified"


def look_at_place(found: Detections, place: list[float] | None, classes: frozenset[str], min_score: float,
                  min_iou: float) -> Look:
    """The violation is still there when a detection of its classes, at or above the rule's
    score, overlaps the case's box by `min_iou` or more (anywhere in the frame when the case
    has no box). The best overlapping detection is reported even when below the score."""
    names = [found.names.get(int(c), str(int(c))) for c in found.class_ids]
    keep = [i for i, name in enumerate(names) if name in classes]
    if not keep:
        return Look(False)
    boxes = np.asarray(found.xyxy, np.float64)[keep]
    scores = np.asarray(found.scores, np.float64)[keep]
    if place is None:
        overlaps = np.ones(len(keep))
    else:
        overlaps = box_iou(np.asarray([place], np.float64), boxes)[0]
    at_place = overlaps >= min_iou
    if not at_place.any():
        return Look(False)
    best = int(np.argmax(np.where(at_place, scores, -1.0)))
    return Look(still_there=bool(scores[best] >= min_score), score=round(float(scores[best]), 4),
                iou=round(float(overlaps[best]), 4), box=tuple(round(float(v), 1) for v in boxes[best]))


def due_time(handled_at: datetime, delay_s: float, camera: Camera | None) -> datetime:
    """The delay after the handled report, postponed into the camera's schedule: the camera
    looks only when its rules apply (a market's hours, daylight)."""
    due = handled_at + timedelta(seconds=delay_s)
    return next_in_schedule(camera.schedule, due) if camera is not None else due


def plan(session: Session, case: Case, camera: Camera | None, config: RecheckSettings,
         now: datetime | None = None) -> Recheck | None:
    """In the transaction that marks the case handled: one pending re-check per case (a
    repeated "handled" report does not add another)."""
    pending = session.scalars(select(Recheck).where(Recheck.case_id == case.id, Recheck.state == "pending")).first()
    if pending is not None:
        return pending
    handled_at = now or datetime.now(timezone.utc)
    recheck = Recheck(case_id=case.id, handled_at=handled_at, due_at=due_time(handled_at, config.delay_s, camera),
                      state="pending", attempts=0, detail="")
    session.add(recheck)
    session.flush()
    record(session, ACTOR, "recheck.planned", f"case:{case.case_number}", None,
           {"due_at": recheck.due_at.isoformat(), "camera": case.camera})
    return recheck


def cancel(session: Session, case: Case, reason: str) -> int:
    """The case system closed the case itself: nothing left to verify."""
    result = session.execute(update(Recheck).where(Recheck.case_id == case.id, Recheck.state == "pending")
                             .values(state="cancelled", detail=reason[:500]))
    return result.rowcount or 0


def apply_look(session: Session, case: Case, recheck: Recheck, look: Look, base_url: str,
               now: datetime | None = None) -> RecheckOutcome:
    """Record what the camera saw (the after photo is already among the case's evidence)
    and tell the case system once."""
    now = now or datetime.now(timezone.utc)
    before = {"status": case.status, "recheck": recheck.state}
    recheck.state = look.outcome
    recheck.checked_at = now
    recheck.attempts += 1
    recheck.score, recheck.iou = look.score, look.iou
    recheck.detail = (f"still there: score {look.score:.2f}, IoU {look.iou:.2f} with the case's box"
                      if look.still_there else
                      "gone: nothing of the violation's classes at the case's place" if look.score is None else
                      f"gone: best at the place scored {look.score:.2f}, below the rule's score")
    if look.still_there:
        case.status = "reopened"
        case.reopened += 1
        queue_version(session, case, "case.reopened", base_url)
    else:
        case.status = "closed"
        queue_version(session, case, "case.verified", base_url)
    case.updated_at = now
    record(session, ACTOR, f"recheck.{look.outcome}", f"case:{case.case_number}", before,
           {"status": case.status, "recheck": recheck.state, "score": look.score, "iou": look.iou})
    return look.outcome


def recheck_counts(db: Database) -> dict[str, int]:
    """Re-checks by state: verified (closed), reopened, pending, cancelled, failed."""
    with db.sessions() as session:
        counts = dict(session.execute(select(Recheck.state, func.count()).group_by(Recheck.state)).all())
    return {state: int(counts.get(state, 0)) for state in RECHECK_STATES}


# -- the worker that makes the looks ---------------------------------------------------------
FrameSource = Callable[[Camera, float], Any]  # (camera, timeout) -> Frame | None


class RecheckWorker:
    """Makes the due looks. `cases` the CaseService (each outcome is one transaction there);
    `cameras()` the cameras the service runs now; `grab(camera, timeout)` a fresh frame of
    one; `alert_threshold(camera, violation)` the learned score for that pair, if any
    (serving/cases/thresholds.py)."""

    def __init__(self, cases: Any, cameras: Callable[[], dict[str, Camera]], detector: Any, grab: FrameSource,
                 taxonomy: Taxonomy, config: RecheckSettings,
                 alert_threshold: Callable[[str, str], float | None] = lambda camera, violation: None,
                 notify: Callable[[], None] = lambda: None, faults: Faults | None = None) -> None:
        self.cases = cases
        # The service's faults: a pass the database (or evidence disk) refuses enters that
        # fault, logged once per outage, instead of a traceback per pass.
        self.faults = faults
        self.cameras = cameras
        self.detector = detector
        self.grab = grab
        self.taxonomy = taxonomy
        self.config = config
        self.alert_threshold = alert_threshold
        self.notify = notify  # an outcome was queued for the case system (wakes delivery)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"verified": 0, "reopened": 0, "retried": 0, "failed": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gridwatch-recheck", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_pass()
            self._wake.wait(self.config.poll_s)
            self._wake.clear()

    def run_pass(self) -> None:
        """One pass over the due re-checks; a failure keeps the worker alive (the next pass
        retries): a part away is a fault, anything else is logged with its traceback."""
        try:
            self.run_due()
        except Exception as exc:  # noqa: BLE001
            fault = held_fault(exc) if self.faults is not None else None
            if fault is None:
                log.exception("re-check pass failed")
            else:
                self.faults.enter(*fault)

    def run_due(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Every re-check due by `now`, oldest first: [(case number, what happened)]."""
        now = now or datetime.now(timezone.utc)
        done = []
        for recheck_id, case_number in self.cases.due_rechecks(now):
            if self._stop.is_set():
                break
            done.append((case_number, self.check(recheck_id, case_number, now)))
        return done

    def check(self, recheck_id: int, case_number: str, now: datetime) -> str:
        case = self.cases.get(case_number)
        camera = self.cameras().get(case.camera) if case is not None else None
        if case is None or camera is None:
            return self.cases.recheck_failed(recheck_id, f"camera {case.camera if case else '?'} is not run here",
                                             retry_at=None)
        if not camera.in_schedule(now):
            return self.cases.postpone_recheck(recheck_id, next_in_schedule(camera.schedule, now))
        try:
            frame = self.grab(camera, self.config.frame_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure to read the camera is a retry
            frame, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = "no frame from the camera"
        if frame is None:
            self.counts["retried"] += 1
            return self.cases.recheck_failed(recheck_id, error, retry_at=now + timedelta(seconds=self.config.retry_s),
                                             max_tries=self.config.max_tries)
        rule = self._rule(camera, case.violation)
        model = getattr(self.detector, "current", self.detector)  # one model for the whole look
        found = (model.detect_tiled(frame.image, tile=camera.tile_size) if camera.tiled_static_checks
                 else model.detect([frame.image])[0])
        learned = self.alert_threshold(camera.id, case.violation)
        look = look_at_place(found, case.box, rule.classes, learned if learned is not None else rule.min_score,
                             self.config.min_iou)
        label = f"{case.violation} {'still there' if look.still_there else 'gone'}"
        evidence = EvidenceFrame(box=tuple(case.box) if case.box else None, label=label, image=frame.image,
                                 detections=found)
        outcome = self.cases.finish_recheck(recheck_id, look, evidence, model.info.version)
        if outcome in self.counts:
            self.counts[outcome] += 1
            self.notify()
        return outcome

    def _rule(self, camera: Camera, violation: str) -> ActiveRule:
        """The camera's rule for the violation; the taxonomy's defaults if it has none now."""
        rule = next((r for r in camera.rules if r.violation == violation and not r.scene_change), None)
        return ActiveRule.resolve(rule or Rule(violation=violation, zone_types=("any",)), self.taxonomy)
