"""Camera leases with fencing numbers, kept in the case database.

A camera is granted to one worker at a time; each grant raises the camera's fencing number.
A worker stamps every event with the number it was granted, and ingest (in the same
transaction that files the event) refuses an event whose number is not the current one, so
a worker cut off by a partition, or hung and woken later, cannot file events for a camera
that has moved on.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from serving.store.db import Database
from serving.store.models import CameraLease


class StaleLeaseError(RuntimeError):
    """An event stamped with a fencing number its camera no longer holds."""

    def __init__(self, camera: str, fencing: int, current: int | None) -> None:
        super().__init__(f"camera {camera}: event under fencing number {fencing} refused "
                         f"(current: {current if current is not None else 'no lease'})")
        self.camera, self.fencing, self.current = camera, fencing, current


def renewal_interval(lease_timeout_s: float) -> float:
    """How often the serving process renews the leases of its live workers."""
    return lease_timeout_s / 2


def stale_after(lease_timeout_s: float) -> float:
    """A held lease not renewed for this long: the serving process that held it is gone
    (three renewals missed; one slow database round does not make it look gone)."""
    return 3 * renewal_interval(lease_timeout_s)


def renew(db: Database, workers: Iterable[str]) -> int:
    """Stamp the leases these workers hold as renewed now (the serving process is alive and
    hears them); how many rows."""
    wanted = list(workers)
    if not wanted:
        return 0
    with db.transaction() as session:
        result = session.execute(update(CameraLease).where(CameraLease.worker.in_(wanted))
                                 .values(renewed_at=datetime.now(timezone.utc)))
        return result.rowcount or 0


def grant(db: Database, cameras: Iterable[str], worker: str | None, node: str = "") -> dict[str, int]:
    """Give the cameras to `worker` (None: revoke, to no one); their new fencing numbers."""
    granted = {}
    with db.transaction() as session:
        for camera in cameras:
            row = session.get(CameraLease, camera, with_for_update=True)
            if row is None:
                row = CameraLease(camera=camera, fencing=0, node="")
                session.add(row)
            row.fencing = (row.fencing or 0) + 1
            row.worker, row.node = worker, node if worker else ""
            row.granted_at = row.renewed_at = datetime.now(timezone.utc)
            granted[camera] = row.fencing
    return granted


def check(session: Session, camera: str, fencing: int) -> None:
    """Inside the ingest transaction; the row stays locked (PostgreSQL) until it commits, so
    a grant cannot slip between the check and the write."""
    row = session.get(CameraLease, camera, with_for_update=True)
    if row is None or row.worker is None or row.fencing != fencing:
        raise StaleLeaseError(camera, fencing, row.fencing if row is not None and row.worker else None)


def current(db: Database) -> list[CameraLease]:
    with db.sessions() as session:
        return list(session.scalars(select(CameraLease).order_by(CameraLease.worker, CameraLease.camera)).all())
