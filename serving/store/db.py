"""Engine, sessions and start-up migrations.

SQLite runs in WAL mode with a busy timeout so the API, the case writer and the delivery
worker can share one file; PostgreSQL is used as given by its URL, with a connect timeout
(`database_connect_timeout_s`) unless the URL sets its own `connect_timeout`: without one a
host that drops packets holds every connection attempt for minutes (the kernel's TCP retries)
instead of entering the `database` fault within seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 5.0


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def connect_args(url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
    """The DBAPI connect arguments for PostgreSQL: libpq's `connect_timeout`, in whole seconds
    (libpq takes at least 2); a `connect_timeout` in the URL's query wins."""
    parsed = make_url(url)
    libpq = parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg")
    if not libpq or "connect_timeout" in parsed.query or connect_timeout_s <= 0:
        return {}
    return {"connect_timeout": max(2, math.ceil(connect_timeout_s))}


def make_engine(url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Engine:
    """`connect_timeout_s`: PostgreSQL only (0: wait as long as the system does)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         connect_args=connect_args(url, connect_timeout_s))


def alembic_config(engine: Engine):  # noqa: ANN201
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to run at every start."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")


def schema_is_current(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads()) == heads


def table_names(engine: Engine) -> list[str]:
    return inspect(engine).get_table_names()


class Database:
    """One engine and its session factory for the whole process."""

    def __init__(self, url: str, *, run_migrations: bool = True,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self.engine = make_engine(url, connect_timeout_s)
        if run_migrations:
            migrate(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits together or not at all."""
        with self.sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
