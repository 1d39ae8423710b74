"""``campaign sql`` cannot write: every write and DDL attempt fails and changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db.readonly import QueryError, ReadOnlyViolation, run_readonly

WRITES = [
    "INSERT INTO campaigns (name, recipe_text, recipe_hash, code_version, site, status, created_at) "
    "VALUES ('evil', '', '', '', 'local', 'x', CURRENT_TIMESTAMP)",
    "UPDATE campaigns SET name = 'renamed'",
    "DELETE FROM campaigns",
    "DROP TABLE campaigns",
    "CREATE TABLE evil (a INTEGER)",
    "ALTER TABLE campaigns ADD COLUMN evil INTEGER",
    "CREATE INDEX evil_ix ON campaigns (status)",
    "CREATE VIEW evil_v AS SELECT 1 AS one",
    "WITH x AS (SELECT 1) DELETE FROM campaigns",
    "SELECT 1; DELETE FROM campaigns",
]
SQLITE_ONLY = [
    "ATTACH DATABASE '{tmp}/evil.db' AS evil",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 42",
    "VACUUM",
    "REINDEX",
]
POSTGRES_ONLY = [
    "SET TRANSACTION READ WRITE",
    "COMMIT; SET default_transaction_read_only = off; DROP TABLE campaigns",
    "TRUNCATE campaigns",
    "CREATE TEMP TABLE evil AS SELECT 1",
    "SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false); DELETE FROM campaigns",
    "GRANT ALL ON campaigns TO PUBLIC",
]


@pytest.fixture
def populated(engine, db_url):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO campaigns (name, recipe_text, recipe_hash, code_version, site, status, created_at) "
            "VALUES ('c1', 'campaign: c1', 'h', '0.1', 'local', 'done', CURRENT_TIMESTAMP)"))
    return db_url


def _snapshot(url: str) -> list[tuple[object, ...]]:
    return run_readonly("SELECT id, name, status FROM campaigns ORDER BY id", url=url).rows


def test_select_works(populated: str) -> None:
    res = run_readonly("SELECT name, status FROM campaigns", url=populated)
    assert res.columns == ["name", "status"]
    assert res.rows == [("c1", "done")]
    assert res.as_dicts() == [{"name": "c1", "status": "done"}]


def test_every_write_is_refused(populated: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = _snapshot(populated)
    extra = SQLITE_ONLY if populated.startswith("sqlite") else POSTGRES_ONLY
    for stmt in WRITES + extra:
        with pytest.raises((ReadOnlyViolation, QueryError)):
            run_readonly(stmt.format(tmp=tmp_path), url=populated)
    assert _snapshot(populated) == before
    assert not (tmp_path / "evil.db").exists()
    tables = run_readonly(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view', 'index') AND name LIKE 'evil%'"
        if populated.startswith("sqlite") else
        "SELECT relname FROM pg_class WHERE relname LIKE 'evil%'", url=populated).rows
    assert tables == []


def test_plain_writes_report_read_only(populated: str) -> None:
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        run_readonly("DELETE FROM campaigns", url=populated)


def test_syntax_error_is_a_query_error(populated: str) -> None:
    with pytest.raises(QueryError):
        run_readonly("SELEC nothing", url=populated)
