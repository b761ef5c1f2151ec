"""Storage: SQLAlchemy models and Alembic migrations (SQLite WAL by default, PostgreSQL by URL)."""
