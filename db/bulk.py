"""Many-row INSERT and UPDATE-by-key through the driver's ``executemany``, for the steering loop's hot path.

SQLAlchemy's ``session.execute(stmt, [rows…])`` spends most of its time per row in generic parameter
construction (``construct_params``), several times the driver's own cost, which is what bounds a campaign that
records thousands of task state changes per second. Here each statement is compiled once per (table, columns,
dialect) and every row goes through the columns' own bind processors (``TypeEngine.bind_processor``: the same
conversions SQLAlchemy applies, e.g. datetimes to SQLite's text form, enums to their names, JSON through the
engine's serializer) straight into ``Connection.exec_driver_sql``. It runs inside the caller's session, so the
rows commit (or roll back) with the rest of its unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, bindparam, func
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind names in statement order (positional paramstyles)
    positional: bool
    columns: tuple[str, ...]  # the row key each bind name reads
    processors: tuple[Callable[[Any], Any] | None, ...]


_CACHE: dict[tuple[str, str, tuple[str, ...], tuple[str, ...] | None, tuple[tuple[str, str], ...]], _Compiled] = {}


def _compile(table: Table, columns: tuple[str, ...], key: tuple[str, ...] | None, dialect: Dialect,
             fallback: tuple[tuple[str, str], ...] = ()) -> _Compiled:
    cache_key = (dialect.name, table.name, columns, key, fallback)
    hit = _CACHE.get(cache_key)
    if hit is not None:
        return hit
    keep = dict(fallback)
    values: dict[str, Any] = {c: bindparam(f"v_{c}") for c in columns if c not in (key or ())}
    for c, other in keep.items():  # SET c = COALESCE(:c, other): a NULL given keeps the row's own value
        values[c] = func.coalesce(values[c], table.c[other])
    if key is None:
        stmt: Any = table.insert().values(values)
    else:
        stmt = table.update().where(and_(*(table.c[k] == bindparam(f"v_{k}") for k in key))).values(values)
    compiled = stmt.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
    defaulted = [n for n in names if not n.startswith("v_")]
    if defaulted:  # _with_defaults fills every Python-side default first; a server-side one cannot be bound
        raise ValueError(f"{table.name}: rows must set {', '.join(defaulted)} (no Python-side default)")
    cols = tuple(n[2:] for n in names)
    processors = tuple(table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in cols)
    out = _Compiled(str(compiled), names, compiled.positional, cols, processors)
    _CACHE[cache_key] = out
    return out


def _params(compiled: _Compiled, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The driver's parameter rows, converted column by column (one pass per column, no call per value for a
    column without a bind processor)."""
    columns = [_bound_column([row[c] for row in rows], process)
               for c, process in zip(compiled.columns, compiled.processors, strict=True)]
    converted = list(zip(*columns, strict=True))
    if compiled.positional:
        return converted
    return [dict(zip(compiled.names, values, strict=True)) for values in converted]


def _bound_column(values: list[Any], process: Callable[[Any], Any] | None) -> list[Any]:
    """One column's values through its bind processor (``None`` too: a JSON column stores it as ``null``), a value
    shared by many rows (a batch's timestamp "now", which SQLite's processor formats with a Python strftime)
    converted once."""
    if process is None:
        return values
    first = values[0]
    if all(v is first for v in values):
        return [process(first)] * len(values)
    seen: dict[int, Any] = {}  # id(value) -> bound value (the rows keep their values alive: ids are not reused)
    out = []
    for v in values:
        key = id(v)
        if key not in seen:
            seen[key] = process(v)
        out.append(seen[key])
    return out


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """``INSERT INTO table`` one row per dict, as one ``executemany`` (all rows have the same keys)."""
    if rows:
        _execute(session, table, rows, None)


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]], key: str | tuple[str, ...] = "id",
                *, fallback: Mapping[str, str] | None = None) -> None:
    """``UPDATE table SET … WHERE key = …`` for every row, as one ``executemany`` (rows share their keys;
    each row holds the ``key`` column(s) and the columns to set).

    Args:
        session: The caller's session (the rows commit with it).
        table: The table.
        rows: One dict per row to update.
        key: The column, or columns, that pick the row.
        fallback: ``{column: other}``: where a row gives ``None`` for ``column``, it is set to the row's current
            ``other`` (``COALESCE``; ``other`` may be ``column`` itself: keep what it holds).
    """
    if rows:
        _execute(session, table, rows, (key,) if isinstance(key, str) else tuple(key),
                 tuple(sorted((fallback or {}).items())))


def _with_defaults(table: Table, rows: Sequence[dict[str, Any]],
                   key: tuple[str, ...] | None) -> Sequence[dict[str, Any]]:
    """The rows with the columns' Python-side defaults (INSERT) or ``onupdate`` values (UPDATE) filled in for the
    columns they do not set, as SQLAlchemy's own execution would (a callable default is called once per batch)."""
    extra: dict[str, Any] = {}
    for col in table.columns:
        fill = col.onupdate if key is not None else col.default
        if col.key in rows[0] or fill is None:
            continue
        if fill.is_scalar:
            extra[col.key] = fill.arg  # type: ignore[attr-defined]
        elif fill.is_callable:
            extra[col.key] = fill.arg(None)  # type: ignore[attr-defined]  # SQLAlchemy wraps it to take a context
    return [{**row, **extra} for row in rows] if extra else rows


def _execute(session: Session, table: Table, rows: Sequence[dict[str, Any]], key: tuple[str, ...] | None,
             fallback: tuple[tuple[str, str], ...] = ()) -> None:
    rows = _with_defaults(table, rows, key)
    conn = session.connection()
    compiled = _compile(table, tuple(rows[0]), key, conn.dialect, fallback)
    conn.exec_driver_sql(compiled.sql, _params(compiled, rows))
