"""Writing a case version to the outbox, in the transaction that changed the case."""

from __future__ import annotations

import json
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from serving.cases.public import CaseEventName, CasePublic, WebhookBody
from serving.store.models import Case, OutboxMessage


def queue_version(session: Session, case: Case, event: CaseEventName, base_url: str) -> str:
    """A new case version and its webhook body, stored exactly as it will be signed and sent."""
    case.version += 1
    session.flush()  # evidence rows get their ids, which the body's URLs carry
    body = WebhookBody(event=event, version=case.version, case=CasePublic.of(case, base_url))
    session.add(OutboxMessage(
        case_id=case.id, case_version=case.version, idempotency_key=f"{case.case_number}-v{case.version}",
        event=event, payload=json.dumps(body.model_dump(mode="json"), ensure_ascii=False, sort_keys=True),
    ))
    return event


SUPERSEDED = "superseded"  # an outbox state: never sent, a newer version of its case went instead


def coalesce(session: Session, message_id: int, due: Any) -> tuple[Literal["send", "skip", "wait"], OutboxMessage | None]:
    """Just before a message is sent: the case system gets only the newest version of a case,
    and never an older one after a newer one. None when this message is not to be sent: a
    newer version of its case is queued or was delivered (or it retracts a case the case
    system never got), so it is marked superseded, if `due` (a condition on the row: not in
    flight elsewhere) still holds. Otherwise the message to send: a first delivery of a case
    whose earlier versions were all superseded is sent as its report.

    ("send", message), ("skip", None): nothing to send, go on with the case's next version;
    ("wait", None): in flight elsewhere, the case's later versions wait."""
    message = session.get(OutboxMessage, message_id)
    if message is None or message.state != "pending":
        return "skip", None
    same_case = (OutboxMessage.case_id == message.case_id,)
    # Delivered once counts as delivered, even when a replay put it back in the queue.
    delivered = or_(OutboxMessage.state == "delivered", OutboxMessage.delivered_at.is_not(None))
    newer = session.scalar(select(func.count()).select_from(OutboxMessage).where(
        *same_case, OutboxMessage.case_version > message.case_version,
        or_(OutboxMessage.state == "pending", delivered)))
    delivered_before = session.scalar(select(func.count()).select_from(OutboxMessage).where(
        *same_case, OutboxMessage.case_version < message.case_version, delivered))
    why = ""
    if newer:
        why = "superseded: a newer version of the case is queued or delivered"
    elif not delivered_before and message.event == "case.retracted":
        why = "superseded: retracts a version the case system never got"
    if why:
        marked = session.execute(
            update(OutboxMessage).where(OutboxMessage.id == message.id, OutboxMessage.state == "pending", due)
            .values(state=SUPERSEDED, last_error=why).execution_options(synchronize_session=False)).rowcount
        return ("skip", None) if marked else ("wait", None)
    if not delivered_before and message.event == "case.updated":
        body = json.loads(message.payload)
        body["event"] = message.event = "case.reported"
        message.payload = json.dumps(body, ensure_ascii=False, sort_keys=True)
    return "send", message
