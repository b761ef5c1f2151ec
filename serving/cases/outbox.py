"""Writing a case version to the outbox, in the transaction that changed the case."""

from __future__ import annotations

import json

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
