"""A database outage is two log lines (the fault starting, the fault over), not a traceback or a
warning per retry from each part that reads the database: re-checks, delivery, thresholds."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import OperationalError

from serving.health import Faults
from tests.support.service import wait_for


class AwayDatabase:
    """A database that refuses every session, as a stopped PostgreSQL does; counts the tries."""

    def __init__(self) -> None:
        self.tries = 0

    def sessions(self):
        self.tries += 1
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    transaction = sessions


def outage_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def assert_one_line_per_outage(caplog, faults: Faults) -> None:
    lines = outage_lines(caplog)
    assert [r.getMessage().split(":")[0] for r in lines] == ["fault database"], [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in lines)
    assert "connection refused" in faults.current()["database"]
    faults.leave("database")  # what the service's probe does when the database answers again
    assert caplog.records[-1].getMessage().startswith("fault database over after")


def test_thresholds_read_during_an_outage_log_the_fault_once(caplog) -> None:
    from serving.cases.thresholds import ThresholdBook
    from serving.settings import ThresholdSettings

    caplog.set_level(logging.INFO)
    db, faults = AwayDatabase(), Faults()
    book = ThresholdBook(db, ThresholdSettings(), refresh_s=0.0, faults=faults)  # reads once at construction
    for _ in range(3):  # the refresher's reads, every refresh_s
        assert book.refresh() is False
    for _ in range(4):  # the rules ask on every analysed frame: from memory, never the database
        assert book.alert("cam-a", "bin_overflow") is None
    assert db.tries == 4
    assert_one_line_per_outage(caplog, faults)


def test_recheck_passes_during_an_outage_log_the_fault_once(caplog) -> None:
    from serving.cases.recheck import RecheckWorker
    from serving.settings import RecheckSettings

    class Cases:
        tries = 0

        def due_rechecks(self, now):
            self.tries += 1
            return AwayDatabase().sessions()

    caplog.set_level(logging.INFO)
    cases, faults = Cases(), Faults()
    worker = RecheckWorker(cases, lambda: {}, None, lambda camera, timeout: None, None, RecheckSettings(),
                           faults=faults)
    for _ in range(4):
        worker.run_pass()
    assert cases.tries == 4
    assert_one_line_per_outage(caplog, faults)


def test_delivery_passes_during_an_outage_log_the_fault_once(caplog) -> None:
    from serving.delivery import DeliveryConfig, DeliveryWorker

    caplog.set_level(logging.INFO)
    db, faults = AwayDatabase(), Faults()
    worker = DeliveryWorker(db, DeliveryConfig(url="http://127.0.0.1:9/cases", secret="s", poll_s=0.01),
                            faults=faults)
    worker.start()
    try:
        wait_for(lambda: db.tries >= 4, timeout=10)
    finally:
        worker.stop()
    assert isinstance(worker._thread, threading.Thread) and not worker._thread.is_alive()
    assert_one_line_per_outage(caplog, faults)
