"""Named SQL queries shipped in ``db/queries/*.sql``.

Each file starts with a header::

    -- name: top_trials
    -- description: one line shown by ``campaign sql --list``
    -- param: campaign = null     (optional, default NULL)
    -- param: model               (required)

Parameters are written ``:name``. A file ``NAME.postgresql.sql`` overrides ``NAME.sql`` on PostgreSQL where the
dialects differ (date arithmetic, string aggregation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUERIES_DIR = Path(__file__).parent / "queries"
_PARAM_RE = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class UnknownQuery(KeyError):
    """No named query of that name."""


class QueryParamError(ValueError):
    """A parameter is missing, unknown or malformed."""


@dataclass(frozen=True)
class NamedQuery:
    """A parsed query file."""

    name: str
    description: str
    sql: str
    path: Path
    params: dict[str, str | None] = field(default_factory=dict)  # name -> default text (None: required)

    def bind(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``given`` with the defaults: strings (from the command line) are converted to numbers and null;
        numbers, booleans and None (from Python) are taken as they are."""
        unknown = set(given) - set(self.params)
        if unknown:
            raise QueryParamError(
                f"query {self.name!r} has no parameter {sorted(unknown)[0]!r} (it takes: {', '.join(self.params) or 'none'})"
            )
        out: dict[str, Any] = {}
        for name, default in self.params.items():
            raw = given.get(name, default)
            if raw is None:
                raise QueryParamError(f"query {self.name!r} needs --param {name}=VALUE")
            out[name] = _convert(raw)
        return out

    def for_dialect(self, dialect: str) -> str:
        """The SQL with parameters in the dialect's placeholder style."""
        return placeholders(self.sql, dialect)


def placeholders(sql: str, dialect: str) -> str:
    """``sql`` written with ``:name`` parameters, in ``dialect``'s placeholder style (``%(name)s`` for psycopg)."""
    if dialect == "postgresql":
        return _PARAM_RE.sub(r"%(\1)s", sql.replace("%", "%%"))
    return sql


def _convert(raw: Any) -> Any:
    if raw is None or isinstance(raw, bool | int | float):
        return raw
    text = str(raw).strip()
    if text.lower() in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse(path: Path) -> NamedQuery:
    name = path.name.split(".")[0]
    description = ""
    params: dict[str, str | None] = {}
    body: list[str] = []
    for line in path.read_text().splitlines():
        m = re.match(r"--\s*(name|description|param):\s*(.*)$", line.strip())
        if m and not body:
            key, value = m.groups()
            if key == "name":
                name = value.strip()
            elif key == "description":
                description = value.strip()
            else:
                pname, _, default = value.partition("=")
                params[pname.strip()] = default.strip() if _ else None
        else:
            body.append(line)
    return NamedQuery(name=name, description=description, sql="\n".join(body).strip(), path=path, params=params)


def list_queries(dialect: str = "sqlite") -> list[NamedQuery]:
    """All named queries for ``dialect``, sorted by name."""
    found: dict[str, NamedQuery] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        parts = path.name.split(".")
        if len(parts) == 3 and parts[1] != dialect:
            continue
        query = _parse(path)
        if len(parts) == 3 or query.name not in found:
            found[query.name] = query
    return sorted(found.values(), key=lambda q: q.name)


def get_query(name: str, dialect: str = "sqlite") -> NamedQuery:
    """The named query ``name`` for ``dialect``, or :class:`UnknownQuery` listing the known ones."""
    for query in list_queries(dialect):
        if query.name == name:
            return query
    known = ", ".join(q.name for q in list_queries(dialect))
    raise UnknownQuery(f"no named query {name!r} (known: {known})")
