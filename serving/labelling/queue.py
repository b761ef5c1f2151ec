"""The labelling queue: sampled frames stored, leased to one reviewer at a time, labelled
(boxes with detector classes) or skipped. No case is made from a labelling item.

Routes (serving/web/routes.py) and the pipeline's `on_sample` call this; the export
(serving/review_export.py) reads the labelled rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import String, case, cast, func, select, update

from serving.audit import record
from serving.cases.leases import held_by_other, lease_first, release
from serving.clock import SYSTEM_CLOCK, WallClock
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.pipeline.uncertainty import FIRST_ASKED, LabellingSample
from serving.store.db import Database
from serving.store.models import LabellingItem


class LabellingError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class LabelBox(BaseModel):
    """One box a labeller drew or kept: a detector class and xyxy in the frame's pixels."""

    model_config = ConfigDict(extra="forbid")

    class_name: str = Field(min_length=1, max_length=64)
    box: list[float] = Field(min_length=4, max_length=4)

    @field_validator("box")
    @classmethod
    def _has_area(cls, box: list[float]) -> list[float]:
        x1, y1, x2, y2 = box
        if not (x2 > x1 and y2 > y1):
            raise ValueError("a box is [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        return [round(float(v), 1) for v in box]


class LabellingView(BaseModel):
    """One item as the review page and the listing show it."""

    id: int
    camera: str
    taken_at: str
    reasons: list[str]
    model_version: str
    width: int
    height: int
    image_url: str
    detections: list[dict[str, Any]]
    status: str
    boxes: list[LabelBox] | None
    labelled_by: str
    labelled_at: str | None

    @classmethod
    def of(cls, item: LabellingItem) -> LabellingView:
        return cls(id=item.id, camera=item.camera, taken_at=item.taken_at.isoformat(), reasons=list(item.reasons),
                   model_version=item.model_version, width=item.width, height=item.height,
                   image_url=f"/review/labelling/{item.id}/frame", detections=item.detections, status=item.status,
                   boxes=[LabelBox(**b) for b in item.boxes] if item.boxes is not None else None,
                   labelled_by=item.labelled_by,
                   labelled_at=item.labelled_at.isoformat() if item.labelled_at else None)


class LabellingQueue:
    def __init__(self, db: Database, evidence: EvidenceStore, class_names: Any, tz: ZoneInfo,
                 clock: WallClock = SYSTEM_CLOCK) -> None:
        """`clock`: the service's wall clock, which leases are taken, renewed and judged on."""
        self.db = db
        self.evidence = evidence
        self.class_names = class_names  # () -> the served model's class names (the model may be swapped)
        self.tz = tz
        self.clock = clock

    # -- in: the pipeline's samples ------------------------------------------------------------
    def add(self, sample: LabellingSample) -> int:
        """Store the frame (once, hashed) and queue it; returns the item's id."""
        owner = f"labelling/{sample.camera}/{sample.taken_at.astimezone(self.tz):%Y%m%d}"
        stored = self.evidence.write_original(owner, EvidenceFrame(box=None, image=sample.image))
        h, w = sample.image.shape[:2]
        with self.db.transaction() as session:
            item = LabellingItem(camera=sample.camera, taken_at=sample.taken_at, reasons=list(sample.reasons),
                                 model_version=sample.model_version, detections=sample.detections.to_records(),
                                 path=stored.path, sha256=stored.sha256, media_type=stored.media_type,
                                 width=w, height=h, status="pending")
            session.add(item)
            session.flush()
            return item.id

    def spent(self, camera: str, day: date) -> int:
        """Samples already queued for `camera` on the local `day` (the budget after a restart)."""
        start = datetime.combine(day, time(0), self.tz)
        with self.db.sessions() as session:
            return session.scalar(select(func.count()).select_from(LabellingItem).where(
                LabellingItem.camera == camera, LabellingItem.taken_at >= start,
                LabellingItem.taken_at < start + timedelta(days=1))) or 0

    # -- the reviewers' side ----------------------------------------------------------------------
    def claim_next(self, holder: str, skip: list[int], lease_s: float, camera: str | None = None) -> LabellingItem | None:
        """Lease the oldest pending item nobody else holds."""
        query = select(LabellingItem.id).where(LabellingItem.status == "pending")
        if camera:
            query = query.where(LabellingItem.camera == camera)
        if skip:
            query = query.where(LabellingItem.id.not_in(skip))
        with self.db.transaction() as session:
            # Frames where the wall's scene-change rule fired first (flyers and banners have no real
            # labelled image at all), then the oldest. reasons is a JSON list: matched as its text.
            first = case((cast(LabellingItem.reasons, String).like(f'%"{FIRST_ASKED}"%'), 0), else_=1)
            item_id = lease_first(session, LabellingItem,
                                  query.order_by(first, LabellingItem.taken_at, LabellingItem.id),
                                  holder, lease_s, LabellingItem.status == "pending", clock=self.clock)
            return None if item_id is None else session.get(LabellingItem, item_id)

    def renew(self, holder: str, ids: list[int], lease_s: float) -> int:
        if not ids:
            return 0
        with self.db.transaction() as session:
            return session.execute(
                update(LabellingItem).where(LabellingItem.id.in_(ids), LabellingItem.leased_by == holder,
                                            LabellingItem.status == "pending")
                .values(lease_until=self.clock.now() + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)).rowcount

    def save(self, item_id: int, boxes: list[LabelBox], *, labeller: str) -> LabellingItem:
        """The labeller's boxes are the frame's labels (none: nothing of the model's classes
        is in it). Classes must be the served model's; boxes must lie in the frame."""
        names = set(self.class_names())
        unknown = sorted({b.class_name for b in boxes} - names)
        if unknown:
            raise LabellingError(f"unknown detector classes {unknown}; the model's are {sorted(names)}")
        return self._finish(item_id, "labelled", labeller, boxes)

    def skip(self, item_id: int, *, labeller: str) -> LabellingItem:
        return self._finish(item_id, "skipped", labeller, None)

    def _finish(self, item_id: int, status: str, labeller: str, boxes: list[LabelBox] | None) -> LabellingItem:
        with self.db.transaction() as session:
            item = session.get(LabellingItem, item_id)
            if item is None:
                raise LabellingError(f"no labelling item {item_id}", status=404)
            if item.status != "pending":
                raise LabellingError(f"labelling item {item_id} is already {item.status}", status=409)
            now = self.clock.now()
            if held_by_other(item, labeller, now):
                raise LabellingError(f"labelling item {item_id} is being labelled by someone else", status=409)
            for b in boxes or []:
                x1, y1, x2, y2 = b.box
                if x1 < 0 or y1 < 0 or x2 > item.width or y2 > item.height:
                    raise LabellingError(f"box {b.box} is outside the {item.width}x{item.height} frame")
            item.status = status
            item.boxes = [b.model_dump() for b in boxes] if boxes is not None else None
            item.labelled_by = labeller
            item.labelled_at = now
            release(item)
            record(session, labeller, f"labelling.{'save' if status == 'labelled' else 'skip'}",
                   f"labelling:{item_id}", {"status": "pending"},
                   {"status": status, **({"boxes": item.boxes} if boxes is not None else {})})
            session.flush()
            return item

    def get(self, item_id: int) -> LabellingItem | None:
        with self.db.sessions() as session:
            return session.get(LabellingItem, item_id)

    def list(self, status: Literal["pending", "labelled", "skipped"] | None = None, camera: str | None = None,
             limit: int = 100) -> list[LabellingItem]:
        query = select(LabellingItem).order_by(LabellingItem.id).limit(limit)
        if status is not None:
            query = query.where(LabellingItem.status == status)
        if camera:
            query = query.where(LabellingItem.camera == camera)
        with self.db.sessions() as session:
            return list(session.scalars(query))



def labelled_items(db: Database, since: datetime | None, cameras: Sequence[str]) -> list[LabellingItem]:
    """What `gridwatch review export` takes, in a stable order."""
    query = select(LabellingItem).where(LabellingItem.status == "labelled").order_by(LabellingItem.id)
    if since is not None:
        query = query.where(LabellingItem.labelled_at >= since)
    if cameras:
        query = query.where(LabellingItem.camera.in_(cameras))
    with db.sessions() as session:
        return list(session.scalars(query))

