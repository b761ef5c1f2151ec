"""The database engine: PostgreSQL connections give up after a connect timeout (a host that
takes the connection and never answers is a fault within seconds, not a hang); SQLite is as it was."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from serving.health import held_fault
from serving.settings import Settings
from serving.store.db import CONNECT_TIMEOUT_S, Database, connect_args

PG = "postgresql+psycopg2://gridwatch@127.0.0.1:5432/postgres"


def test_postgresql_gets_a_connect_timeout_unless_its_url_sets_one() -> None:
    assert Settings().database_connect_timeout_s == CONNECT_TIMEOUT_S == 5.0
    assert connect_args(PG) == {"connect_timeout": 5}
    assert connect_args(PG, 2.5) == {"connect_timeout": 3}  # libpq counts whole seconds
    assert connect_args(PG, 0.5) == {"connect_timeout": 2}  # and takes no less than 2
    assert connect_args(PG, 0) == {}  # 0: the system's own
    assert connect_args(PG + "?connect_timeout=30") == {}  # the URL's own wins
    assert connect_args("postgresql+pg8000://gw@127.0.0.1/db") == {}  # not libpq: its own options
    assert connect_args("sqlite:///gw.db") == {}


def test_sqlite_is_unaffected(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'gw.db'}", connect_timeout_s=3)
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10000
    db.close()


@pytest.fixture
def silent_server():
    """A port that accepts TCP connections and never says a word (a PostgreSQL host hung or
    behind a dropping firewall looks like this to a client)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_postgresql_that_never_answers_is_a_database_fault_within_the_timeout(silent_server: int) -> None:
    pytest.importorskip("psycopg2")
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            Database(f"postgresql+psycopg2://gridwatch@127.0.0.1:{silent_server}/postgres", connect_timeout_s=2)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(60)  # without a connect timeout libpq waits for ever
    assert outcome, "the connection attempt was still waiting after 60 s"
    assert isinstance(outcome[0], OperationalError) and "timeout" in str(outcome[0])
    assert held_fault(outcome[0])[0] == "database"
