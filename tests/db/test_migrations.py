"""Alembic migrations: they build the schema, match the ORM exactly, and refuse unknown revisions."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from db.engine import make_engine
from db.migrate import SchemaMismatch, current_revision, ensure_schema, head_revision
from db.models import Base


def test_upgrade_creates_every_table(db_url: str) -> None:
    eng = make_engine(db_url)
    assert current_revision(eng) is None
    assert ensure_schema(eng) == head_revision()
    assert current_revision(eng) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
    eng.dispose()


#: Indexes with a DESC column: Alembic reflects the column without its direction and reports the index as
#: changed, so they are compared by their columns' names here instead.
EXPRESSION_INDEXES = {"ix_tasks_claim_order": ["stage_id", "state", "priority", "created_at"]}


def test_autogenerate_finds_no_difference(engine) -> None:  # type: ignore[no-untyped-def]
    def include(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
        return not (type_ == "index" and name in EXPRESSION_INDEXES)

    with engine.connect() as conn:
        opts = {"compare_type": True, "include_object": include}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("tasks")}
    assert diff == []
    for name, columns in EXPRESSION_INDEXES.items():
        assert indexes.get(name) == columns, indexes


def test_unknown_newer_revision_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaMismatch, match="does not know"):
        ensure_schema(engine)


def test_old_schema_without_auto_upgrade_is_refused(db_url: str) -> None:
    eng = make_engine(db_url)
    with pytest.raises(SchemaMismatch, match="campaign db upgrade"):
        ensure_schema(eng, auto_upgrade=False)
    eng.dispose()


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
