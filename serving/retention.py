"""Retention: each outcome's evidence is kept as long as the city says, then purged.

A case's evidence is due when the case has ended and its outcome (review status) has a keep
period (`retention.keep_days`) that has run out since the case was last seen or decided,
whichever is later. A purge removes the files and their evidence rows and appends a
tombstone to the evidence chain, in the same transaction: what was removed (each item's
chain position, kind and hash), when, and by which rule. `verify` then skips those files
and reports the tombstone, so the chain still proves everything that remains. The case
record itself stays: its history is the chain's, not the photos'.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from serving.chain import TOMBSTONE, EvidenceChain, canonical
from serving.evidence import EvidenceStore
from serving.settings import RetentionSettings
from serving.store.db import Database
from serving.store.models import Case, ChainEntry, Evidence

log = logging.getLogger("gridwatch.retention")


@dataclass
class PurgeReport:
    cases: list[str] = field(default_factory=list)
    items: int = 0
    bytes: int = 0
    unremoved: list[str] = field(default_factory=list)  # files the disk would not delete


class Retention:
    def __init__(self, db: Database, evidence: EvidenceStore, chain: EvidenceChain, settings: RetentionSettings,
                 *, lock: Any = None) -> None:
        """`lock`: the case writer's, so a purge and an ingest never draw the same chain position."""
        self.db = db
        self.evidence = evidence
        self.chain = chain
        self.settings = settings
        self.lock = lock
        self.last_purge: datetime | None = None
        self.next_purge: datetime | None = None
        self.purged_items = 0
        self.purged_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self, now: datetime) -> list[tuple[int, str]]:
        """(case id, rule) of ended cases whose outcome's keep period is over and that still hold evidence."""
        found = []
        with self.db.sessions() as session:
            for outcome, days in self.settings.keep_days.items():
                cutoff = now - timedelta(days=days)
                rows = session.execute(
                    select(Case.id, Case.last_seen, Case.reviewed_at)
                    .where(Case.review_status == outcome, Case.state == "ended",
                           Case.id.in_(select(Evidence.case_id).distinct()))).all()
                rule = f"{outcome}: keep {days:g} days"
                found += [(cid, rule) for cid, seen, decided in rows if max(seen, decided or seen) <= cutoff]
        return sorted(found)

    def purge(self, now: datetime | None = None) -> PurgeReport:
        now = now or datetime.now(timezone.utc)
        report = PurgeReport()
        for case_id, rule in self.due(now):
            with self.lock if self.lock is not None else nullcontext():
                self._purge_case(case_id, rule, now, report)
        self.last_purge = now
        self.next_purge = now + timedelta(seconds=self.settings.purge_every_s)
        self.purged_items += report.items
        self.purged_bytes += report.bytes
        if report.cases:
            log.info("retention: %d evidence item(s) of %d case(s) purged", report.items, len(report.cases))
        return report

    def _purge_case(self, case_id: int, rule: str, now: datetime, report: PurgeReport) -> None:
        with self.db.transaction() as session:
            case = session.get(Case, case_id)
            items = list(case.evidence)
            if not items:
                return
            removed = [{"seq": e.chain_seq, "kind": e.kind, "sha256": e.sha256, "path": e.path} for e in items]
            detail = {"rule": rule, "removed": [e.chain_seq for e in items if e.chain_seq is not None],
                      "items": removed, "at": now.isoformat()}
            self.chain.append(session, case.case_number, TOMBSTONE,
                              hashlib.sha256(canonical(detail).encode("utf-8")).hexdigest(), detail=detail)
            paths = [e.path for e in items]
            report.bytes += sum(e.size for e in items)
            for item in items:
                session.delete(item)
            number = case.case_number
        # Only once the tombstone is committed: a purge that fails before leaves every file.
        for path in paths:
            try:
                self.evidence.resolve(path).unlink(missing_ok=True)
            except OSError as exc:
                report.unremoved.append(f"{path}: {exc}")
                log.warning("retention: %s not deleted: %s", path, exc)
        report.cases.append(number)
        report.items += len(paths)

    # -- the schedule --------------------------------------------------------------------------
    def start(self) -> None:
        if not self.settings.keep_days:
            return
        self.next_purge = datetime.now(timezone.utc)
        self._thread = threading.Thread(target=self._loop, name="gridwatch-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.purge()
            except Exception:  # noqa: BLE001 - the database may be away; the next pass purges
                log.exception("retention purge failed")
                self.next_purge = datetime.now(timezone.utc) + timedelta(seconds=self.settings.purge_every_s)
            self._stop.wait(self.settings.purge_every_s)

    def figures(self) -> dict[str, Any]:
        """For /metrics and the dashboard: what the evidence takes on disk, and the purge schedule."""
        with self.db.sessions() as session:
            files, stored = session.execute(select(func.count(Evidence.id), func.coalesce(func.sum(Evidence.size), 0))).one()
            entries = session.scalar(select(func.count()).select_from(ChainEntry))
        return {"files": files, "bytes": int(stored), "chain_entries": entries,
                "purged_items": self.purged_items, "purged_bytes": self.purged_bytes,
                "last_purge": self.last_purge.timestamp() if self.last_purge else None,
                "next_purge": self.next_purge.timestamp() if self.next_purge else None,
                "keep_days": dict(self.settings.keep_days)}
