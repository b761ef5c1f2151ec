"""The database refusing writes for a while: events wait in order and are stored once it
answers again; none is dropped, none duplicated."""

from __future__ import annotations

import sqlite3

from sqlalchemy import func, select

from tests.support.service import wait_for
from serving.service import GridwatchService
from serving.settings import Settings
from serving.store.models import Case


def test_events_survive_a_locked_database(tmp_path, shared_detector, make_event) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_key="gw_admin_for_fault_test_0001")
    service = GridwatchService(settings, detector=shared_detector)
    service.start()
    try:
        db_file = tmp_path / "data" / "gridwatch.db"
        blocker = sqlite3.connect(db_file, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database past the busy timeout
        service.on_event(*make_event("opened", event_id="a", camera="cam-a"))
        service.on_event(*make_event("opened", event_id="b", camera="cam-b"))  # queued behind "a"
        assert service.counters["event_failures"] == 1
        assert service.metrics()["pending_events"] == 2
        blocker.execute("ROLLBACK")
        blocker.close()

        def stored() -> int:
            with service.db.sessions() as session:
                return session.scalar(select(func.count()).select_from(Case))

        wait_for(lambda: stored() == 2, timeout=15)
        # The retry loop takes an event off the held queue just after its case commits.
        wait_for(lambda: service.metrics()["pending_events"] == 0, timeout=5)
        service.on_event(*make_event("opened", event_id="a", camera="cam-a"))  # a replay: no new case
        assert stored() == 2
    finally:
        service.stop()
