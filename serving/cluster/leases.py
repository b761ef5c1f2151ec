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

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.store.db import Database
from serving.store.models import CameraLease


class StaleLeaseError(RuntimeError):
    """An event stamped with a fencing number its camera no longer holds."""

    def __init__(self, camera: str, fencing: int, current: int | None) -> None:
        super().__init__(f"camera {camera}: event under fencing number {fencing} refused "
                         f"(current: {current if current is not None else 'no lease'})")
        self.camera, self.fencing, self.current = camera, fencing, current


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
            row.granted_at = datetime.now(timezone.utc)
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
