"""PostgreSQL roles: the reader role users' SQL runs as, and the check that a role can do nothing but read.

Threat model (see ``docs/security.md``): the driver's role owns and writes the campaign tables; everybody else
reads through a reader role that has ``SELECT`` on the campaign tables and nothing more. A read-only
transaction alone is not enough: a superuser, or a member of ``pg_execute_server_program`` /
``pg_write_server_files`` / ``pg_read_server_files``, can still run programs and read or write the server's
files from inside one (``COPY ... TO PROGRAM``, ``pg_read_file``), and a role with write grants is one
``SET TRANSACTION`` bug away from writing.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, text

from db import models as m

#: Predefined roles whose members reach the server's programs or files.
SERVER_ACCESS_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_ROLE_FLAGS = """
SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication
FROM pg_roles WHERE rolname = current_user
"""
_SERVER_ROLES = """
SELECT r.rolname FROM pg_roles r
WHERE r.rolname = ANY(%(roles)s) AND pg_has_role(current_user, r.oid, 'USAGE')
"""
_WRITABLE_TABLES = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%'
  AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
       OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE'))
ORDER BY 1 LIMIT 5
"""
_OWNED_OBJECTS = """
SELECT count(*) FROM pg_class c WHERE pg_has_role(current_user, c.relowner, 'USAGE')
  AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))
"""


def privileges_beyond_reading(conn: Any) -> list[str]:
    """What the connected role may do besides reading, in words (empty: a pure reader).

    Args:
        conn: An open psycopg connection (its transaction is left as it was found: rolled back).
    """
    found: list[str] = []
    with conn.cursor() as cur:
        cur.execute(_ROLE_FLAGS)
        row = cur.fetchone()
        if row is not None:
            for flag, name in zip(row, ("superuser", "CREATEROLE", "CREATEDB", "BYPASSRLS", "REPLICATION"),
                                  strict=True):
                if flag:
                    found.append(name)
        cur.execute(_SERVER_ROLES, {"roles": list(SERVER_ACCESS_ROLES)})
        found += [f"member of {r}" for (r,) in cur.fetchall()]
        cur.execute(_WRITABLE_TABLES)
        writable = [t for (t,) in cur.fetchall()]
        if writable:
            found.append(f"may write {', '.join(writable)}")
        cur.execute(_OWNED_OBJECTS)
        owned = cur.fetchone()
        if owned is not None and owned[0]:
            found.append(f"owns {owned[0]} table(s) or other relation(s)")
    conn.rollback()
    return found


def campaign_tables() -> list[str]:
    """The campaign's tables (what a reader may read)."""
    return sorted(m.Base.metadata.tables)


def grant_reader(engine: Engine, role: str, *, password: str | None = None) -> list[str]:
    """Create (if needed) a login role that can only read the campaign tables, and grant it exactly that.

    Run it as the campaign database's owner. The role gets ``CONNECT`` on the database, ``USAGE`` on the schema
    and ``SELECT`` on each campaign table; nothing else, and no membership of other roles.

    Args:
        engine: An engine connected as the owner of the campaign tables.
        role: The reader role's name (lower-case letters, digits and ``_``).
        password: Its password (None: no password; authenticate it another way, e.g. ``peer`` or a client
            certificate).

    Returns:
        The tables granted.

    Raises:
        ValueError: the name is not a plain role name, or the role exists with more than reading rights.
    """
    if not _ROLE_NAME.match(role):
        raise ValueError(f"role name {role!r}: use lower-case letters, digits and _ (at most 63)")
    tables = campaign_tables()
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
        if exists:
            flags = conn.execute(text("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls "
                                      "FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
            if flags:
                raise ValueError(f"role {role!r} exists and is privileged; choose another name for the reader")
        else:
            can_create = conn.execute(text("SELECT rolsuper OR rolcreaterole FROM pg_roles "
                                           "WHERE rolname = current_user")).scalar()
            if not can_create:
                raise ValueError(f"role {role!r} does not exist and this role cannot create roles: ask a database "
                                 f"administrator to run CREATE ROLE {role} LOGIN NOINHERIT; then run this again "
                                 "to grant it the campaign tables")
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                              "NOBYPASSRLS NOINHERIT"))
        if password is not None:
            quoted = conn.execute(text("SELECT quote_literal(:p)"), {"p": password}).scalar()
            conn.execute(text(f'ALTER ROLE "{role}" PASSWORD {quoted}'))
        database = conn.execute(text("SELECT current_database()")).scalar()
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        for table in tables:
            conn.execute(text(f'GRANT SELECT ON TABLE "{schema}"."{table}" TO "{role}"'))
    return tables
