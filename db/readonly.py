"""Read-only access for users' SQL (``campaign sql``) and for reporting.

Read-only by construction, not by inspecting the statement:

* SQLite: the file is opened with ``mode=ro``, ``PRAGMA query_only = ON`` is set, and an authorizer denies
  every action except reading (so ATTACH, DETACH and PRAGMA writes are refused too). The driver refuses
  several statements in one call.
* PostgreSQL: the session's default is a read-only transaction, each query runs in a transaction that has
  already executed a statement (so ``SET TRANSACTION READ WRITE`` is refused), and the statement is sent with
  the extended protocol, which refuses several statements in one call. The transaction is always rolled back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.engine import DatabaseError, parse_url, resolve_url, safe_url


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


def _sqlite_authorizer(action: int, *_args: object) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY


def _run_sqlite(path: str, sql: str, params: Mapping[str, Any] | Sequence[Any]) -> QueryResult:
    if not Path(path).exists():
        raise DatabaseError(f"no campaign database at {path} (run a campaign first, or pass --db URL)")
    uri = f"file:{Path(path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_sqlite_authorizer)
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall()
        except sqlite3.ProgrammingError as exc:
            raise QueryError(str(exc)) from exc
        except (sqlite3.DatabaseError, sqlite3.Warning) as exc:
            msg = str(exc)
            if any(w in msg.lower() for w in _WRITE_WORDS):
                raise ReadOnlyViolation(f"refused: the campaign database is read-only here ({msg})") from exc
            raise QueryError(msg) from exc
        columns = [d[0] for d in cur.description or ()]
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.rollback()
        conn.close()


def _run_postgres(url: str, sql: str, params: Mapping[str, Any] | Sequence[Any]) -> QueryResult:
    import psycopg
    from psycopg import errors

    parsed = parse_url(url)
    kwargs: dict[str, Any] = {
        "host": parsed.host or "localhost",
        "port": parsed.port or 5432,
        "dbname": parsed.database,
        "user": parsed.username,
        "password": parsed.password,
        "connect_timeout": 10,
        "options": "-c default_transaction_read_only=on -c statement_timeout=300000",
    }
    try:
        conn = psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot reach database {safe_url(parsed)}: {first}") from exc
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT 1")  # after a statement, the transaction can no longer become read-write
            try:
                # A prepared statement uses the extended protocol, which refuses several commands in one call.
                cur.execute(sql, params or None, prepare=True)
            except (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege, errors.ActiveSqlTransaction) as exc:
                raise ReadOnlyViolation(f"refused: the campaign database is read-only here ({exc})") from exc
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


def run_readonly(sql: str, params: Mapping[str, Any] | Sequence[Any] = (), url: str | None = None) -> QueryResult:
    """Run one SQL statement read-only and return its rows.

    Args:
        sql: One statement. Named parameters are ``:name`` on SQLite and ``%(name)s`` on PostgreSQL; the named
            queries in ``db/queries`` are written portably and translated by :mod:`db.queries`.
        params: Bound parameters.
        url: Database URL (see :func:`db.engine.resolve_url`).

    Raises:
        ReadOnlyViolation: the statement tried to write.
        QueryError: the statement is invalid.
        DatabaseError: the database cannot be reached.
    """
    resolved = resolve_url(url)
    parsed = parse_url(resolved)
    if not sql.strip():
        raise QueryError("empty SQL statement")
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise DatabaseError("campaign sql needs a database file, not an in-memory database")
        return _run_sqlite(path, sql, params)
    return _run_postgres(resolved, sql, params)
