"""The case stage: ViolationEvent (+ EvidenceFrame) in, cases and outbox messages out."""

from serving.cases.ingest import IngestResult
from serving.cases.listing import CaseFilter
from serving.cases.policy import CaseError, CasePolicy
from serving.cases.public import CasePublic, WebhookBody
from serving.cases.service import CaseService

__all__ = ["CaseError", "CaseFilter", "CasePolicy", "CasePublic", "CaseService", "IngestResult", "WebhookBody"]
