"""Schema migrations with Alembic, driven from code (no alembic.ini needed).

``campaign db upgrade`` calls :func:`upgrade`. Every run calls :func:`ensure_schema`, which upgrades an empty or
older database and refuses clearly when the database was written by a newer version of the tool.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from db.engine import DatabaseError, safe_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaMismatch(DatabaseError):
    """The database schema is not the one this code expects and cannot be upgraded automatically."""


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the shipped migrations and bound to ``engine``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this code."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(engine), revision)


def ensure_schema(engine: Engine, *, auto_upgrade: bool = True) -> str:
    """Bring the database to the head revision, or raise :class:`SchemaMismatch` explaining why not.

    Args:
        engine: The campaign database.
        auto_upgrade: Upgrade an older schema (True for runs); False makes an old schema an error.

    Returns:
        The head revision.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaMismatch(
            f"database {safe_url(engine.url)} is at schema revision {current}, which this version of campaign "
            f"does not know (newest here: {head}); upgrade campaign, or use another database"
        )
    if not auto_upgrade:
        raise SchemaMismatch(
            f"database {safe_url(engine.url)} is at schema revision {current or 'none'}, expected {head}: "
            "run `campaign db upgrade`"
        )
    upgrade(engine)
    return head
