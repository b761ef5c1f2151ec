"""Fixtures of the case tests: a case service on the parametrised database."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.taxonomy import load_taxonomy
from serving.cases import CasePolicy, CaseService
from serving.evidence import EvidenceStore
from serving.store.db import Database


@pytest.fixture
def cases(db_url: str, tmp_path: Path):
    """Bin overflow auto-confirms at 0.5, so an event becomes a reported case at once."""
    db = Database(db_url)
    yield CaseService(db, EvidenceStore(tmp_path / "ev"), load_taxonomy(),
                      CasePolicy(auto_confirm={"bin_overflow": 0.5}), public_url="http://gw.test")
    db.close()
