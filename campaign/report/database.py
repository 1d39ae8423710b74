"""A read-only SQLAlchemy engine for status and reports.

Status and reports only read. On SQLite the file is opened with ``mode=ro`` and ``PRAGMA query_only`` (no
``BEGIN IMMEDIATE`` write lock, unlike the steering engine of :func:`db.engine.make_engine`, so a watcher never
delays the steering process); on PostgreSQL every transaction is read-only by default.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

from db.engine import DatabaseError, check_sqlite_file, parse_url, resolve_url, safe_url


def _sqlite_readonly(path: Path) -> Engine:
    if not path.exists():
        raise DatabaseError(f"no campaign database at {path} (run a campaign first, or pass --db URL)")
    check_sqlite_file(path)
    uri = f"file:{path.resolve()}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn

    engine = create_engine("sqlite+pysqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _deferred(conn: object) -> None:  # one snapshot for all queries; a plain BEGIN takes no write lock
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    return engine


def readonly_engine(url: str | None = None) -> Engine:
    """An engine that can only read the campaign database at ``url``.

    Args:
        url: Database URL (default: ``$CAMPAIGN_DB`` or ``sqlite:///campaign.db``; a bare path is a SQLite file).

    Raises:
        DatabaseError: the URL is malformed, names an unsupported backend, or the SQLite file does not exist.
    """
    resolved = resolve_url(url)
    parsed = parse_url(resolved)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise DatabaseError("status and reports need a database file, not an in-memory database")
        return _sqlite_readonly(Path(parsed.database))
    return create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "options": "-c default_transaction_read_only=on"},
    )


def describe(engine: Engine) -> str:
    """The engine's URL for messages (password hidden)."""
    return safe_url(engine.url)
