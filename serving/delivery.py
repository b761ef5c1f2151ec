"""Delivery to the case system: the outbox, the webhook signer and the worker that drains it.

At-least-once on the wire, exactly-once for a receiver that honours `Idempotency-Key`
(one key per case version): a message is marked delivered only after a 2xx, so a crash
between sending and marking sends it again with the same key.

Signature: `X-Gridwatch-Signature: sha256=HEX(HMAC-SHA256(secret, f"{timestamp}.{body}"))`
with `X-Gridwatch-Timestamp` in Unix seconds; receivers reject stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, or_, select, update

from serving.cases.outbox import coalesce
from serving.clock import SYSTEM_CLOCK, WallClock, beyond_horizon
from serving.store.db import Database
from serving.store.models import Case, OutboxMessage

log = logging.getLogger("gridwatch.delivery")

SIGNATURE_HEADER = "X-Gridwatch-Signature"
TIMESTAMP_HEADER = "X-Gridwatch-Timestamp"
EVENT_HEADER = "X-Gridwatch-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """For receivers (and tests): a valid signature over a fresh timestamp."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: between half and all of base * 2**(attempt-1), capped;
    the jitter keeps many failed messages from retrying in lock step."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def refused(status: int) -> bool:
    """A 4xx other than 408 (timeout) and 429 (slow down): the receiver rejects this message
    itself, and the same bytes will be rejected again; to the dead letter with the reason."""
    return 400 <= status < 500 and status not in (408, 429)


@dataclass(frozen=True)
class DeliveryConfig:
    url: str
    secret: str
    max_tries: int = 20
    backoff_s: float = 2.0
    backoff_max_s: float = 900.0
    timeout_s: float = 10.0
    poll_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryConfig | None:
        if not settings.webhook_url:
            return None
        if not settings.webhook_secret:
            raise ValueError("webhook_url is set but webhook_secret is not: deliveries must be signed")
        return cls(url=settings.webhook_url, secret=settings.webhook_secret,
                   max_tries=settings.delivery_max_tries, backoff_s=settings.delivery_backoff_s,
                   backoff_max_s=settings.delivery_backoff_max_s, timeout_s=settings.delivery_timeout_s,
                   poll_s=settings.delivery_poll_s)


class DeliveryWorker:
    def __init__(self, db: Database, config: DeliveryConfig, clock: WallClock = SYSTEM_CLOCK,
                 faults: Any = None) -> None:
        """`faults`: the service's `serving.health.Faults`; a pass that fails because the
        database is away enters that fault (one line per outage) instead of logging here."""
        import httpx

        self.db = db
        self.faults = faults
        self.config = config
        self.clock = clock  # due times are stored, shared with other processes: wall-clock
        self._lease_s = config.timeout_s * 2 + 5  # a claimed message's next try is pushed this far
        # No due time is ever set further ahead than this; one that is was set before the wall
        # clock jumped back, and is due now rather than after the jump's length.
        self._horizon_s = max(config.backoff_max_s, self._lease_s) + 1
        self._client = httpx.Client(timeout=config.timeout_s, follow_redirects=False)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"sent": 0, "failed": 0, "dead": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gridwatch-delivery", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the message in flight, if any, is sent and recorded."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.config.timeout_s + 5)
        self._client.close()

    def _run(self) -> None:
        failing = False  # one log line when passes start failing, one when they work again
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                if failing:
                    log.info("delivery passes work again")
                failing = False
            except Exception as exc:  # the database may be briefly away; keep the worker alive
                from serving.health import held_fault

                fault = held_fault(exc) if self.faults is not None else None
                if fault is not None:
                    self.faults.enter(*fault)  # its end is logged when the service sees the part back
                else:
                    if not failing:
                        log.exception("delivery pass failed; retrying quietly until one works")
                    failing = True
                busy = 0
            if not busy:
                self._wake.wait(self.config.poll_s)
                self._wake.clear()

    def run_once(self, now: datetime | None = None) -> int:
        """Send every due message, oldest first, one version at a time per case. Returns
        how many were attempted."""
        now = now or self.clock.now()
        with self.db.sessions() as session:
            pending = session.scalars(
                select(OutboxMessage).where(OutboxMessage.state == "pending")
                .order_by(OutboxMessage.id).limit(200)
            ).all()
        blocked: set[int] = set()
        attempted = 0
        for message in pending:
            if self._stop.is_set():
                break
            if message.case_id in blocked:
                continue
            if message.next_attempt_at > now and not beyond_horizon(message.next_attempt_at, now, self._horizon_s):
                blocked.add(message.case_id)  # later versions wait for this one
                continue
            verdict, to_send = self._coalesce(message)
            if verdict == "skip":
                continue  # superseded by a newer version of its case: that one goes instead
            if to_send is None:
                blocked.add(message.case_id)
                continue
            attempted += 1
            if not self._send(to_send):
                blocked.add(message.case_id)
        return attempted

    def _due(self, now: datetime):  # noqa: ANN202
        """A pending message no one is sending now: due, or due beyond the horizon (see _claim)."""
        return or_(OutboxMessage.next_attempt_at <= now,
                   OutboxMessage.next_attempt_at > now + timedelta(seconds=self._horizon_s))

    def _coalesce(self, message: OutboxMessage) -> tuple[str, OutboxMessage | None]:
        """Only the newest version of a case is sent (serving/cases/outbox.py `coalesce`): a case
        that changed again before this version went out sends the newer one alone."""
        with self.db.transaction() as session:
            return coalesce(session, message.id, self._due(self.clock.now()))

    def _claim(self, message: OutboxMessage) -> bool:
        """Lease the message by moving its next try past this send's timeout. The update is
        conditional, so of several workers on one database only one sends it; if this one
        dies mid-send, the lease runs out and the message is sent again (same key)."""
        now = self.clock.now()
        lease = timedelta(seconds=self._lease_s)
        with self.db.transaction() as session:
            result = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message.id, OutboxMessage.state == "pending", self._due(now))
                .values(next_attempt_at=now + lease)
            )
            return result.rowcount == 1

    def _send(self, message: OutboxMessage) -> bool:
        if not self._claim(message):
            return False
        body = message.payload.encode("utf-8")
        timestamp = str(int(self.clock.now().timestamp()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.config.secret, timestamp, body),
            IDEMPOTENCY_HEADER: message.idempotency_key,
            EVENT_HEADER: message.event,
            "User-Agent": "gridwatch-delivery/1",
        }
        error, final = "", False
        try:
            response = self._client.post(self.config.url, content=body, headers=headers)
            ok = 200 <= response.status_code < 300
            if not ok:
                final = refused(response.status_code)
                error = f"HTTP {response.status_code}{' (refused, not retried)' if final else ''}: {response.text[:200]}"
        except Exception as exc:  # noqa: BLE001 - any transport failure is a retry
            ok = False
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempts = message.attempts + 1
        values: dict[str, Any] = {"attempts": attempts}
        if ok:
            values.update(state="delivered", delivered_at=self.clock.now(), last_error="")
            self.counts["sent"] += 1
        elif final or attempts >= self.config.max_tries:
            values.update(state="dead", last_error=error)
            self.counts["dead"] += 1
            log.warning("outbox %s dead after %d tries: %s", message.idempotency_key, attempts, error)
        else:
            delay = backoff_delay(attempts, self.config.backoff_s, self.config.backoff_max_s)
            values.update(last_error=error, next_attempt_at=self.clock.now() + timedelta(seconds=delay))
            self.counts["failed"] += 1
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == message.id).values(**values))
        return ok


def replay(db: Database, *, case_number: str | None = None, include_delivered: bool = False) -> int:
    """Put dead (and optionally delivered) messages back in the queue with fresh tries.
    The idempotency key is kept, so a receiver that already has a version ignores it."""
    states = ["dead", "delivered"] if include_delivered else ["dead"]
    with db.transaction() as session:
        query = update(OutboxMessage).where(OutboxMessage.state.in_(states))
        if case_number is not None:
            case_ids = select(Case.id).where(Case.case_number == case_number).scalar_subquery()
            query = query.where(OutboxMessage.case_id == case_ids)
        result = session.execute(query.values(state="pending", attempts=0, last_error="",
                                              next_attempt_at=datetime.now(timezone.utc)))
        return result.rowcount or 0


def outbox_stats(db: Database) -> dict[str, Any]:
    with db.sessions() as session:
        counts = dict(session.execute(
            select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all())
        oldest = session.scalar(select(func.min(OutboxMessage.created_at)).where(OutboxMessage.state == "pending"))
    lag = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
    return {"pending": counts.get("pending", 0), "delivered": counts.get("delivered", 0),
            "dead": counts.get("dead", 0), "lag_s": max(0.0, lag)}
