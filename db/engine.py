"""Engines and sessions from a database URL (naming the database, without SQLAlchemy: :mod:`db.url`).

SQLite runs in WAL mode with a busy timeout and foreign keys on;
PostgreSQL is reached through ``postgresql+psycopg://…``. :mod:`db.readonly` runs statements that cannot
write by construction (SQLite ``mode=ro`` + ``query_only`` + an authorizer; PostgreSQL read-only transactions).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.url import (
    DatabaseError,
    check_sqlite_file,
    parse_url,
    require_existing,
    resolve_url,
    safe_url,
    sqlite_file,
)

__all__ = ["DatabaseError", "check_connection",
           "check_sqlite_file", "disk_full_error", "json_loads", "make_engine", "parse_url", "require_existing",
           "resolve_url", "safe_url", "session_factory", "transaction"]

#: How long a SQLite writer waits for a lock before failing (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 60_000


def json_loads(text: str | bytes) -> object:
    """Decode a JSON column: orjson (several times faster on the specs and results the steering loop reads
    back for every task), falling back to the standard library for what orjson refuses (``NaN``/``Infinity``,
    which :func:`json.dumps` writes for non-finite metrics)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _on_sqlite_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_begin_immediate(conn: object) -> None:
    # Take the write lock at BEGIN so that two writers queue on busy_timeout instead of failing with
    # "database is locked" when a read transaction tries to upgrade to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")  # type: ignore[attr-defined]


def make_engine(url: str | None = None, *, echo: bool = False) -> Engine:
    """A read-write engine for the steering process (the only writer).

    Args:
        url: Database URL; see :func:`resolve_url`.
        echo: Log SQL statements.

    Raises:
        DatabaseError: the URL is malformed or names an unsupported backend.
    """
    resolved = resolve_url(url)
    parsed = parse_url(resolved)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(resolved)
        if path is not None:
            parent = Path(path).parent
            if not parent.is_dir():
                raise DatabaseError(f"{safe_url(parsed)}: directory {parent} does not exist")
            check_sqlite_file(path)
        engine = create_engine(
            parsed,
            echo=echo,
            json_deserializer=json_loads,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        )
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(
        parsed,
        echo=echo,
        json_deserializer=json_loads,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10},
    )


def check_connection(engine: Engine) -> None:
    """Open one connection or raise :class:`DatabaseError` naming the URL."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot reach database {safe_url(engine.url)}: {reason}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


#: Fragments of driver messages meaning "no space left" (SQLite, PostgreSQL, the OS).
_DISK_FULL = ("database or disk is full", "could not extend file", "no space left on device", "disk full",
              "quota exceeded")


def disk_full_error(exc: BaseException, url: str | URL) -> DatabaseError | None:
    """A :class:`DatabaseError` naming the database when ``exc`` means its disk is full, else ``None``."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    if not any(frag in text.lower() for frag in _DISK_FULL):
        return None
    first = text.splitlines()[0] if text else type(exc).__name__
    return DatabaseError(f"cannot write to database {safe_url(url)}: {first} (free space, then resume)")


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any exception.

    Raises:
        DatabaseError: the database's disk is full (the transaction is rolled back, nothing is written).
    """
    try:
        with factory() as session, session.begin():
            yield session
    except OperationalError as exc:
        bind = factory.kw.get("bind")
        full = disk_full_error(exc, bind.url if bind is not None else "<database>")
        if full is None:
            raise
        raise full from exc
