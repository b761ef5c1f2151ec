"""Audit entries as a reader sees them: the action in words, and only the fields that
changed, each value in the page's language (review states, reasons, violation names),
never a JSON blob with escaped Chinese."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import AuditRecord
from serving.store.db import Database
from serving.store.models import Case
from serving.web.localtime import CameraZones

# Values of these fields are words of the page: the label key is prefix + value.
VALUE_LABELS = {"review_status": "status_", "status": "case_", "recheck": "recheck_", "role": "role_",
                "load": "load_"}
REASON_KEYS = ("false_alarm", "not_here", "duplicate", "bad_image")


@dataclass(frozen=True)
class Change:
    field: str
    before: str
    after: str


@dataclass(frozen=True)
class AuditLine:
    id: int
    at: str  # local time of the target's camera, with its zone
    actor: str
    action: str  # in words
    action_id: str  # as stored, e.g. review.confirm (for tests and CSV)
    target: str
    case_number: str | None
    changes: list[Change]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor, "action": self.action, "action_id": self.action_id,
                "target": self.target, "case_number": self.case_number,
                "changes": [{"field": c.field, "before": c.before, "after": c.after} for c in self.changes]}


class AuditWords:
    """Turns records into lines for one language."""

    def __init__(self, t: dict[str, str], taxonomy: Taxonomy, lang: str) -> None:
        self.t, self.taxonomy, self.lang = t, taxonomy, lang

    def value(self, field: str, value: Any) -> str:
        t = self.t
        if value is None or value == "" or value == []:
            return t["none"]
        if isinstance(value, bool):
            return t["yes"] if value else t["no"]
        if field in VALUE_LABELS and isinstance(value, str):
            return t.get(VALUE_LABELS[field] + value, value)
        if field == "violation" and isinstance(value, str):
            entry = self.taxonomy.by_id.get(value)
            return (entry.name_zh if self.lang == "zh-CN" else entry.name_en) if entry else value
        if field == "reason" and value in REASON_KEYS:
            return t[value]
        if field == "boxes" and isinstance(value, list):
            return t["n_boxes"].format(n=len(value))
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        return str(value)

    def changes(self, before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[Change]:
        before, after = before or {}, after or {}
        fields = list(before) + [k for k in after if k not in before]
        return [Change(self.t.get(f"field_{f}", f), self.value(f, before.get(f)), self.value(f, after.get(f)))
                for f in fields if before.get(f) != after.get(f)]

    def action(self, action: str) -> str:
        return self.t.get(f"action_{action}", action)


def audit_lines(db: Database, records: list[AuditRecord], words: AuditWords, zones: CameraZones) -> list[AuditLine]:
    """`records` for the page; each time in the local zone of its case's camera."""
    numbers = {r.target[5:] for r in records if r.target.startswith("case:")}
    cameras: dict[str, str] = {}
    if numbers:
        with db.sessions() as session:
            cameras = dict(session.execute(select(Case.case_number, Case.camera)
                                           .where(Case.case_number.in_(numbers))).all())
    lines = []
    for r in records:
        number = r.target[5:] if r.target.startswith("case:") else None
        camera = cameras.get(number or "") or (r.target[7:] if r.target.startswith("camera:") else None)
        lines.append(AuditLine(id=r.id, at=zones.show(r.at, camera), actor=r.actor, action=words.action(r.action),
                               action_id=r.action, target=r.target, case_number=number,
                               changes=words.changes(r.before, r.after)))
    return lines
