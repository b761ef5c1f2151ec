"""Storage: migrations at start-up on SQLite (WAL) and PostgreSQL, idempotent, round-trips UTC times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from serving.store.db import Database, schema_is_current, table_names
from serving.store.models import ApiKey


def test_migrations_create_schema_and_rerun_cleanly(db_url: str) -> None:
    db = Database(db_url)
    assert {"cases", "case_events", "evidence", "outbox", "api_keys", "cameras"} <= set(table_names(db.engine))
    assert schema_is_current(db.engine)
    db.close()
    again = Database(db_url)  # a second start migrates nothing and loses nothing
    assert schema_is_current(again.engine)
    again.close()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'sub' / 'g.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.close()


def test_times_round_trip_as_aware_utc(db_url: str) -> None:
    db = Database(db_url)
    shanghai = timezone(timedelta(hours=8))
    made = datetime(2026, 11, 23, 17, 30, tzinfo=shanghai)
    with db.transaction() as session:
        session.add(ApiKey(name="k", prefix="gw_x", key_hash="h" * 64, role="admin", created_at=made))
    with db.sessions() as session:
        key = session.query(ApiKey).one()
        assert key.created_at == made and key.created_at.tzinfo is not None
    with pytest.raises(Exception):
        with db.transaction() as session:
            session.add(ApiKey(name="n", prefix="p", key_hash="z" * 64, role="admin", created_at=datetime(2026, 1, 1)))
    db.close()
