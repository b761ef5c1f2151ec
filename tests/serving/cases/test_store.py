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


def test_upgrade_to_instance_codes_keeps_existing_case_numbers(tmp_path) -> None:
    """Migration 0003 on a database made by 0002: old case numbers stay as they were; new
    ones carry the instance code the migration drew."""
    from alembic import command
    from sqlalchemy import select

    from serving.store.db import alembic_config, make_engine
    from serving.store.models import Case, Instance

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), "0002")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cases (case_number, camera, violation, zone, zone_type, matter_code, matter_name, division,"
            " grid, address, detection_source, first_seen, last_seen, dwell_s, score, best_score, model_version,"
            " needs_review, review_status, review_note, reviewed_by, status, external_id, state, occurrences,"
            " reopened, version, created_at, updated_at) VALUES ('GW20260501-000001', 'cam', 'bin_overflow', '',"
            " '', '37020206042', '', '370202', '370202001001001', '', 'detector', '2026-05-01', '2026-05-01', 0,"
            " 0.9, 0.9, '', 0, 'pending', '', '', 'new', '', 'ended', 1, 0, 1, '2026-05-01', '2026-05-01')"))
    engine.dispose()
    db = Database(url)  # start-up migrates to head
    with db.sessions() as session:
        assert session.scalars(select(Case.case_number)).all() == ["GW20260501-000001"]
        (code,) = session.scalars(select(Instance.code)).all()
    assert len(code) == 6 and code.isalnum()
    db.close()
