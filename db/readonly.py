"""Read-only access for users' SQL (``campaign sql``) and for reporting.

Read-only by construction, not by inspecting the statement:

* SQLite: the file is opened with ``mode=ro``, ``PRAGMA query_only = ON`` is set, and an authorizer denies
  every action except reading (so ATTACH, DETACH and PRAGMA writes are refused too). The driver refuses
  several statements in one call.
* PostgreSQL: the session's default is a read-only transaction, each query runs in a transaction that has
  already executed a statement (so ``SET TRANSACTION READ WRITE`` is refused), and the statement is sent with
  the extended protocol, which refuses several statements in one call. The transaction is always rolled back.
  A read-only transaction still lets a privileged role run server programs or write server files (``COPY ... TO
  PROGRAM``, administrative functions), so users' own SQL runs only over a role that can do nothing but read
  (:func:`db.roles.privileges_beyond_reading` finds what more a role may do; ``campaign db grant-reader``
  creates such a role).

Every statement has a time limit (``timeout_s``; SQLite through a progress handler, PostgreSQL through
``statement_timeout``).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from db.url import DatabaseError, backend_of, check_sqlite_file, parse_url, resolve_url, safe_url, sqlite_file


class ReadOnlyViolation(PermissionError):
    """A statement tried to write through a read-only connection."""


class QueryError(ValueError):
    """The statement is not valid SQL for this database (syntax error, unknown table, …)."""


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query with their column names."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def as_dicts(self) -> list[dict[str, Any]]:
        """Rows as dictionaries keyed by column name."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def to_dataframe(self) -> Any:
        """Rows as a pandas DataFrame (pandas is imported lazily)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)


_SQLITE_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_WRITE_WORDS = ("readonly", "read-only", "read only", "not authorized", "attempt to write", "query_only")


#: Pragmas that only describe the schema (``PRAGMA table_info(tasks)``): allowed; every other pragma is denied.
_SQLITE_SCHEMA_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                                    "index_xinfo", "foreign_key_list"})


def _sqlite_authorizer(action: int, arg1: object = None, *_args: object) -> int:
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and isinstance(arg1, str) and arg1.lower() in _SQLITE_SCHEMA_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


#: Default time limit of one statement, seconds (``$CAMPAIGN_SQL_TIMEOUT_S`` overrides it).
DEFAULT_TIMEOUT_S = 300.0


class StatementTimeout(QueryError):
    """The statement ran past its time limit and was cancelled."""


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    raw = os.environ.get("CAMPAIGN_SQL_TIMEOUT_S")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise QueryError(f"CAMPAIGN_SQL_TIMEOUT_S must be a number of seconds (got {raw!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise QueryError(f"CAMPAIGN_SQL_TIMEOUT_S must be a positive number of seconds (got {raw!r})")
    return value


def _run_sqlite(path: str, sql: str, params: Mapping[str, Any] | Sequence[Any], timeout_s: float) -> QueryResult:
    conn = _connect_sqlite(path)
    try:
        conn.set_authorizer(_sqlite_authorizer)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)  # non-zero: interrupt
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall()
        except sqlite3.ProgrammingError as exc:
            raise QueryError(str(exc)) from exc
        except (sqlite3.DatabaseError, sqlite3.Warning) as exc:
            msg = str(exc)
            if "interrupted" in msg and time.monotonic() > deadline:
                raise StatementTimeout(f"the statement ran past its time limit of {timeout_s:g} s and was "
                                       "cancelled (set CAMPAIGN_SQL_TIMEOUT_S or --timeout)") from exc
            if any(w in msg.lower() for w in _WRITE_WORDS):
                raise ReadOnlyViolation(f"refused: the campaign database is read-only here ({msg})") from exc
            raise QueryError(msg) from exc
        columns = [d[0] for d in cur.description or ()]
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.rollback()
        conn.close()


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` that cannot write (``mode=ro``, ``query_only``)."""
    if not Path(path).exists():
        raise DatabaseError(f"no campaign database at {path} (run a campaign first, or pass --db URL)")
    check_sqlite_file(path)
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=30, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _connect_postgres(url: str, timeout_s: float) -> Any:
    """A psycopg connection whose transactions are read-only by default, statements limited to ``timeout_s``."""
    import psycopg

    parsed = parse_url(url)
    kwargs: dict[str, Any] = {
        "host": parsed.host or "localhost",
        "port": parsed.port or 5432,
        "dbname": parsed.database,
        "user": parsed.username,
        "password": parsed.password,
        "connect_timeout": 10,
        "options": f"-c default_transaction_read_only=on -c statement_timeout={max(1, int(timeout_s * 1000))}",
    }
    try:
        return psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot reach database {safe_url(parsed)}: {first}") from exc


def _run_postgres(url: str, sql: str, params: Mapping[str, Any] | Sequence[Any], timeout_s: float,
                  user_sql: bool) -> QueryResult:
    import psycopg
    from psycopg import errors

    parsed = parse_url(url)
    conn = _connect_postgres(url, timeout_s)
    try:
        if user_sql:
            from db.roles import privileges_beyond_reading

            beyond = privileges_beyond_reading(conn)
            if beyond:
                raise ReadOnlyViolation(
                    f"refused: {safe_url(parsed)} connects as role {parsed.username!r}, which can do more than read "
                    f"({'; '.join(beyond)}). Run your SQL as a reader role: as the campaign database's owner, "
                    "`campaign db grant-reader campaign_reader`, then `campaign sql --db "
                    "postgresql+psycopg://campaign_reader@HOST/DB ...` (see docs/security.md)")
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT 1")  # after a statement, the transaction can no longer become read-write
            try:
                # A prepared statement uses the extended protocol, which refuses several commands in one call.
                cur.execute(sql, params or None, prepare=True)
            except (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege, errors.ActiveSqlTransaction) as exc:
                raise ReadOnlyViolation(f"refused: the campaign database is read-only here ({exc})") from exc
            except errors.QueryCanceled as exc:
                raise StatementTimeout(f"the statement ran past its time limit of {timeout_s:g} s and was "
                                       "cancelled (set CAMPAIGN_SQL_TIMEOUT_S or --timeout)") from exc
            except psycopg.Error as exc:
                msg = str(exc).strip()
                if "read-only" in msg or "read only" in msg:
                    raise ReadOnlyViolation(f"refused: the campaign database is read-only here ({msg})") from exc
                raise QueryError(msg) from exc
            columns = [d.name for d in cur.description or ()]
            rows = cur.fetchall() if cur.description else []
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.close()


def run_readonly(sql: str, params: Mapping[str, Any] | Sequence[Any] = (), url: str | None = None, *,
                 user_sql: bool = False, timeout_s: float | None = None) -> QueryResult:
    """Run one SQL statement read-only and return its rows.

    Args:
        sql: One statement. Named parameters are ``:name`` on SQLite and ``%(name)s`` on PostgreSQL; the named
            queries in ``db/queries`` are written portably and translated by :mod:`db.queries`.
        params: Bound parameters.
        url: Database URL (see :func:`db.engine.resolve_url`).
        user_sql: The statement is a user's own (``campaign sql``): on PostgreSQL it runs only over a role that
            can do nothing but read.
        timeout_s: Time limit of the statement (default ``$CAMPAIGN_SQL_TIMEOUT_S`` or 300 s).

    Raises:
        ReadOnlyViolation: the statement tried to write, or user SQL over a role that can do more than read.
        StatementTimeout: the statement ran past its time limit.
        QueryError: the statement is invalid.
        DatabaseError: the database cannot be reached.
    """
    limit = _timeout_s(timeout_s)
    resolved = resolve_url(url)
    if not sql.strip():
        raise QueryError("empty SQL statement")
    if backend_of(resolved) == "sqlite":
        path = sqlite_file(resolved)
        if path is None:
            raise DatabaseError("campaign sql needs a database file, not an in-memory database")
        return _run_sqlite(path, sql, params, limit)
    return _run_postgres(resolved, sql, params, limit, user_sql)


class Snapshot(Protocol):
    """Reads of one consistent state of the database (what :func:`readonly_snapshot` yields)."""

    dialect: str

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (parameters written ``:name``, whatever the dialect)."""
        ...


@dataclass
class _SqliteSnapshot:
    conn: sqlite3.Connection
    dialect: str = "sqlite"

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, dict(params or {})).fetchall()


@dataclass
class _PostgresSnapshot:
    cur: Any
    dialect: str = "postgresql"

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from db.queries import placeholders

        self.cur.execute(placeholders(sql, "postgresql"), dict(params or {}))
        return [tuple(r) for r in self.cur.fetchall()]


@contextmanager
def readonly_snapshot(url: str | None = None, *, timeout_s: float | None = None) -> Iterator[Snapshot]:
    """Several reads of one consistent state of the campaign database, with the commands' own SQL (not users').

    The status and the lineage tree read through this rather than a SQLAlchemy engine: on SQLite it needs only
    the standard library, which keeps the read-only commands' start-up short. SQLite reads in one deferred
    transaction (no write lock: the steering process is never delayed); PostgreSQL in one ``REPEATABLE READ``
    read-only transaction. Timestamps come back as the driver gives them (text on SQLite: see
    :func:`db.readonly.as_datetime`) and JSON columns as text on SQLite (:func:`db.readonly.as_json`).

    Raises:
        DatabaseError: the database cannot be reached, or is not a campaign database (a table is missing).
    """
    limit = _timeout_s(timeout_s)
    resolved = resolve_url(url)
    if backend_of(resolved) == "sqlite":
        path = sqlite_file(resolved)
        if path is None:
            raise DatabaseError("a read-only snapshot needs a database file, not an in-memory database")
        conn = _connect_sqlite(path)
        try:
            conn.execute("BEGIN")
            try:
                yield _SqliteSnapshot(conn)
            except sqlite3.DatabaseError as exc:
                raise DatabaseError(f"cannot read the campaign database {path}: {exc}") from exc
        finally:
            conn.rollback()
            conn.close()
        return
    import psycopg

    pg = _connect_postgres(resolved, limit)
    try:
        with pg.transaction(force_rollback=True), pg.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                yield _PostgresSnapshot(cur)
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DatabaseError(f"cannot read the campaign database {safe_url(resolved)}: {first}") from exc
    finally:
        pg.close()


def as_datetime(value: Any) -> datetime | None:
    """A timestamp column's value as an aware UTC datetime (SQLite stores text; every timestamp written is UTC)."""
    if value is None:
        return None
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def as_json(value: Any) -> Any:
    """A JSON column's value decoded (SQLite stores text; psycopg decodes it already)."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value
