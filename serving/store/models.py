"""The tables. Times are stored as naive UTC and handed back timezone-aware (UTCDateTime),
so SQLite and PostgreSQL answer the same."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: gridwatch stores timezone-aware times only")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


# Review status (humans) and case status (the city's case system) are separate axes.
REVIEW_STATUSES = ("pending", "confirmed", "corrected", "rejected")
# "reopened": a re-check after "handled" still saw the violation (serving/cases/recheck.py).
CASE_STATUSES = ("new", "dispatched", "reopened", "handled", "closed")
# Whether the violation is still seen by the camera.
CASE_STATES = ("active", "ended")
OUTBOX_STATES = ("pending", "delivered", "dead")
ROLES = ("camera", "reviewer", "case_system", "admin")
USER_ROLES = ("reviewer", "admin")
REJECT_REASONS = ("false_alarm", "not_here", "duplicate", "bad_image")


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_number: Mapped[str] = mapped_column(String(32), unique=True)
    camera: Mapped[str] = mapped_column(String(128))
    violation: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(128), default="")
    zone_type: Mapped[str] = mapped_column(String(64), default="")
    matter_code: Mapped[str] = mapped_column(String(11))
    matter_name: Mapped[str] = mapped_column(String(128), default="")
    legacy_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    division: Mapped[str] = mapped_column(String(6), default="")
    grid: Mapped[str] = mapped_column(String(15), default="")
    address: Mapped[str] = mapped_column(String(256), default="")
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    detection_source: Mapped[str] = mapped_column(String(16), default="detector")
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    dwell_s: Mapped[float] = mapped_column(Float, default=0.0)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    best_score: Mapped[float] = mapped_column(Float, default=0.0)
    box: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    needs_review: Mapped[bool] = mapped_column(default=False)
    review_status: Mapped[str] = mapped_column(String(16), default="pending")
    review_note: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[str] = mapped_column(String(64), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Why a reviewer rejected it (REJECT_REASONS) and the boxes they drew, in the original
    # frame's pixels: kept beside the detection's own box, which the case JSON carries.
    review_reason: Mapped[str] = mapped_column(String(32), default="")
    review_boxes: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True)
    # What the reviewer said a truck's load was (detector.second_stage: open, mesh, tarp, covered,
    # cannot_tell); None: not said. Migration 0013.
    review_load: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The review page's lease: one reviewer works on a case at a time.
    leased_by: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="new")
    external_id: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="active")
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)  # last version queued for delivery
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    evidence: Mapped[list[Evidence]] = relationship(
        back_populates="case", order_by="Evidence.id", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_cases_dedup", "camera", "violation", "zone", "state"),
        Index("ix_cases_updated", "updated_at"),
    )


class CaseEvent(Base):
    """Each event transition seen, so a replayed event is recognised as already applied."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(128), index=True)
    event_type: Mapped[str] = mapped_column(String(16))
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The violation's second stage on this sighting (the event's stage_label/stage_score, e.g.
    # the truck load decision); None without one. Migration 0013.
    stage_label: Mapped[str | None] = mapped_column(String(32), nullable=True)
    stage_score: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (UniqueConstraint("event_id", "event_type", "last_seen", name="uq_case_events_transition"),)


class Evidence(Base):
    __tablename__ = "evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # original, annotated, crop; after, after_annotated (re-check); moment, moment_annotated
    path: Mapped[str] = mapped_column(String(512))  # relative to the evidence directory
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(64), default="image/jpeg")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # On an original frame: every detection the model made in it ([{class_name, box, score}])
    # and that model's version, so a reviewed frame can be exported fully labelled.
    detections: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    # Its entry in the evidence chain (serving/chain.py): where the case system finds its proof.
    chain_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # On a masked copy (serving/privacy.py): the SHA-256 of the sealed original it stands in for.
    masks: Mapped[str] = mapped_column(String(64), default="")
    # The event over time (serving/cases/ingest.py): which moments of the event this frame's
    # items show ("opened", "best", "update", "closed", comma-joined) and the camera time the
    # frame was taken; "" and NULL on evidence stored before, and on re-check photos.
    moment: Mapped[str] = mapped_column(String(32), default="")
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    case: Mapped[Case] = relationship(back_populates="evidence")

    __table_args__ = (UniqueConstraint("case_id", "sha256", "kind", name="uq_evidence_case_hash"),)


class OutboxMessage(Base):
    """A webhook to send, written in the same transaction as the case change it reports."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    case_version: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(96), unique=True)
    event: Mapped[str] = mapped_column(String(32))  # case.reported, case.updated, case.retracted
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body, signed as sent
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # set by rotation


class Instance(Base):
    """One row: this database's instance code, drawn once by migration 0003, so every case
    number (and Idempotency-Key) is unique across databases and stable across restarts."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(8))


class CameraRecord(Base):
    """Cameras added through the API (config-file cameras are not stored)."""

    __tablename__ = "cameras"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class User(Base):
    """A person who signs in to the review page; machines use API keys instead."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebSession(Base):
    """A signed-in browser: only the token's hash is stored, like API keys."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who did what, when, and the record before and after. Rows are only ever inserted."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    # Who the actor is, not just a name (an API key may be named like a user): "user" + the
    # user's id, "key" + the API key's id, or "system" (commands, the service itself).
    actor_kind: Mapped[str] = mapped_column(String(16), default="system", server_default="system")
    actor_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(160), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


LABELLING_STATUSES = ("pending", "labelled", "skipped")


class LabellingItem(Base):
    """A frame the model was unsure about (active learning), waiting for a reviewer's boxes.

    The frame is stored once in the evidence folder; `detections` are the model's boxes as it
    saw them ([{class_name, box, score}]), `boxes` the labeller's ([{class_name, box}]) in the
    frame's pixels: the whole frame's labels, so none are pseudo-labels."""

    __tablename__ = "labelling_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(128))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reasons: Mapped[list[str]] = mapped_column(JSON)  # serving.pipeline.uncertainty.Reason values
    model_version: Mapped[str] = mapped_column(String(64), default="")
    detections: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(512))  # the original frame, relative to the evidence directory
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(64), default="image/png")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    labelled_by: Mapped[str] = mapped_column(String(64), default="")
    labelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    leased_by: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_labelling_status", "status", "id"),
        Index("ix_labelling_camera_taken", "camera", "taken_at"),
    )


RECHECK_STATES = ("pending", "verified", "reopened", "cancelled", "failed")


class Recheck(Base):
    """A re-check (核查) of a case the case system reported handled: when it is due, and what
    the camera saw. Stored, so a restart keeps the pending ones."""

    __tablename__ = "rechecks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The best detection of the violation's classes at the case's place, if any.
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    iou: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")  # why it failed, or what decided it

    __table_args__ = (Index("ix_rechecks_due", "state", "due_at"),)


class ThresholdDecision(Base):
    """A reviewed case as evidence about its camera x violation's thresholds: the score it
    was raised at and whether the reviewer found it right. One row per case; a second
    decision replaces the first."""

    __tablename__ = "threshold_decisions"

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    camera: Mapped[str] = mapped_column(String(128))
    violation: Mapped[str] = mapped_column(String(64))  # as detected, before any correction
    score: Mapped[float] = mapped_column(Float)
    correct: Mapped[bool] = mapped_column()
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_threshold_decisions_pair", "camera", "violation", "decided_at"),)


class Threshold(Base):
    """The thresholds in force for one camera x violation, fitted to its reviews."""

    __tablename__ = "thresholds"

    camera: Mapped[str] = mapped_column(String(128), primary_key=True)
    violation: Mapped[str] = mapped_column(String(64), primary_key=True)
    confirmed: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    alert: Mapped[float | None] = mapped_column(Float, nullable=True)
    auto_confirm: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ThresholdChange(Base):
    """Every move of a camera x violation's thresholds, for the dashboard's history."""

    __tablename__ = "threshold_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    camera: Mapped[str] = mapped_column(String(128))
    violation: Mapped[str] = mapped_column(String(64))
    confirmed: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    alert: Mapped[float | None] = mapped_column(Float, nullable=True)
    auto_confirm: Mapped[float | None] = mapped_column(Float, nullable=True)
    precision_at_alert: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_threshold_history_pair", "camera", "violation", "at"),)


class CameraLease(Base):
    """Cluster mode: which camera worker runs a camera, under which fencing number. The number
    only grows (a row outlives its camera's removal), so events a worker files after its
    camera moved carry an older number than the row's and are refused at ingest."""

    __tablename__ = "camera_leases"

    camera: Mapped[str] = mapped_column(String(128), primary_key=True)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: revoked, held by none
    node: Mapped[str] = mapped_column(String(64), default="")
    fencing: Mapped[int] = mapped_column(Integer, default=0)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Renewed by the serving process while it runs the worker: a lease not renewed for long
    # means that process is gone (`gridwatch cluster status` says so). None: never renewed.
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ChainEntry(Base):
    """One link of the evidence chain (serving/chain.py): an evidence item, a decision or a
    tombstone, holding the hash of the entry before it. Rows are only ever inserted."""

    __tablename__ = "evidence_chain"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))  # ISO time as hashed, kept as text so it hashes alike anywhere
    case_number: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(24))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON, as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_evidence_chain_case", "case_number", "seq"),)


class ChainHead(Base):
    """The chain's head at one moment, signed with the instance's Ed25519 key (and, when a
    time-stamping authority is set, its RFC 3161 token over the same text)."""

    __tablename__ = "chain_heads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)
    entry_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)  # the exact bytes signed
    signature: Mapped[str] = mapped_column(String(128))  # hex
    timestamp_token: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
