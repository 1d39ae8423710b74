"""PostgreSQL least privilege: users' SQL runs only through a role that can do nothing but read the campaign
tables (``campaign db grant-reader``), and a privileged URL is refused before any statement runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from campaign.cli.app import app

pytestmark = pytest.mark.postgres
runner = CliRunner()


@pytest.fixture
def owner_url() -> Iterator[str]:
    """A fresh database owned by a non-superuser owner role (the driver's), with the campaign schema."""
    from db.engine import make_engine
    from db.migrate import ensure_schema
    from tests.conftest import _pg_database

    gen = _pg_database()
    admin_db = next(gen)
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_db)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{owner}" LOGIN CREATEROLE'))
        conn.execute(text(f'GRANT ALL ON DATABASE "{make_url(admin_db).database}" TO "{owner}"'))
        conn.execute(text(f'GRANT ALL ON SCHEMA public TO "{owner}"'))
        # a table that is not the campaign's: a reader must not see it
        conn.execute(text("CREATE TABLE payroll (name text, salary int)"))
        conn.execute(text("INSERT INTO payroll VALUES ('alice', 1)"))
    url = make_url(admin_db).set(username=owner).render_as_string(hide_password=False)
    engine = make_engine(url)
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO campaigns (name, recipe_text, recipe_hash, code_version, site, status, "
                          "created_at) VALUES ('c1', 'campaign: c1', 'h', '0.1', 'local', 'done', now())"))
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE "
                              f"'{owner}' OR usename LIKE 'reader_%'"))
        admin.dispose()
        gen.close()  # drops the database (and what it owns)
        drop = make_engine(make_url(admin_db).set(database="postgres").render_as_string(hide_password=False))
        with drop.begin() as conn:
            for (role,) in conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname = :o OR rolname LIKE "
                                             "'reader_%%' AND rolname LIKE :suffix"),
                                        {"o": owner, "suffix": f"%{owner[-8:]}"}):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        drop.dispose()


@pytest.fixture
def reader_url(owner_url: str) -> str:
    role = f"reader_{make_url(owner_url).username[-8:]}"
    res = runner.invoke(app, ["db", "grant-reader", role, "--db", owner_url])
    assert res.exit_code == 0, res.output
    assert "may read 13 campaign tables and nothing else" in res.output.replace("\n", " ")
    return make_url(owner_url).set(username=role).render_as_string(hide_password=False)


def _sql(url: str, statement: str) -> tuple[int, str]:
    res = runner.invoke(app, ["sql", "--db", url, "--format", "csv", statement])
    assert "Traceback" not in res.output
    return res.exit_code, res.output.replace("\n", " ")


def test_reader_reads_the_campaign_tables(reader_url: str) -> None:
    code, out = _sql(reader_url, "SELECT name, status FROM campaigns")
    assert code == 0 and "c1,done" in out


@pytest.mark.parametrize("statement", [
    "INSERT INTO campaigns (name, recipe_text, recipe_hash, code_version, site, status, created_at) "
    "VALUES ('x', '', '', '', 'local', 'x', now())",
    "DELETE FROM campaigns",
    "COPY campaigns TO PROGRAM 'touch /tmp/campaign-pwned-{u}'",
    "COPY campaigns TO '/tmp/campaign-pwned-{u}'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT * FROM payroll",
    "SELECT lo_import('/etc/passwd')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SET TRANSACTION READ WRITE",
    "CREATE TABLE evil AS SELECT 1",
])
def test_reader_cannot_write_run_programs_or_read_elsewhere(statement: str, reader_url: str,
                                                            owner_url: str) -> None:
    marker = uuid.uuid4().hex
    code, out = _sql(reader_url, statement.format(u=marker))
    assert code == 2, out
    assert out.count("error:") == 1
    assert not Path(f"/tmp/campaign-pwned-{marker}").exists()
    code, out = _sql(reader_url, "SELECT count(*) FROM campaigns")
    assert code == 0 and out.split()[-1] == "1"


@pytest.mark.parametrize("statement", ["SELECT 1", "COPY (SELECT 1) TO PROGRAM 'touch /tmp/campaign-pwned-{u}'"])
def test_privileged_urls_are_refused_before_any_statement(statement: str, owner_url: str) -> None:
    from tests.conftest import PG_ADMIN_URL

    marker = uuid.uuid4().hex
    superuser = make_url(owner_url).set(username=make_url(PG_ADMIN_URL).username).render_as_string(
        hide_password=False)
    for url, why in ((superuser, "superuser"), (owner_url, "may write")):
        code, out = _sql(url, statement.format(u=marker))
        assert code == 2 and "can do more than read" in out and why in out, out
        assert "campaign db grant-reader" in out
    assert not Path(f"/tmp/campaign-pwned-{marker}").exists()


def test_named_queries_still_run_over_the_owner(owner_url: str) -> None:
    res = runner.invoke(app, ["trials", "--db", owner_url])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["trials", "nope", "--db", owner_url]).exit_code == 2


def test_postgres_statement_time_limit(reader_url: str) -> None:
    res = runner.invoke(app, ["sql", "--db", reader_url, "--timeout", "0.5", "SELECT pg_sleep(5)"])
    assert res.exit_code == 2 and "ran past its time limit of 0.5 s" in res.output


def test_grant_reader_without_createrole_says_what_to_ask_for(owner_url: str) -> None:
    from db.engine import make_engine
    from tests.conftest import PG_ADMIN_URL

    owner = make_url(owner_url).username
    admin = make_engine(make_url(owner_url).set(username=make_url(PG_ADMIN_URL).username).render_as_string(
        hide_password=False))
    with admin.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{owner}" NOCREATEROLE'))
    admin.dispose()
    res = runner.invoke(app, ["db", "grant-reader", f"reader_x{owner[-8:]}", "--db", owner_url])
    assert res.exit_code == 2 and "ask a database administrator" in res.output.replace("\n", " ")


def test_grant_reader_refuses_a_privileged_name_and_sqlite(owner_url: str, tmp_path: Path) -> None:
    from tests.conftest import PG_ADMIN_URL

    res = runner.invoke(app, ["db", "grant-reader", make_url(PG_ADMIN_URL).username or "postgres", "--db", owner_url])
    assert res.exit_code == 2 and "privileged" in res.output
    res = runner.invoke(app, ["db", "grant-reader", "Robert'); DROP TABLE campaigns;--", "--db", owner_url])
    assert res.exit_code == 2 and "role name" in res.output
    res = runner.invoke(app, ["db", "grant-reader", "--db", f"sqlite:///{tmp_path / 'c.db'}"])
    assert res.exit_code == 2 and "for PostgreSQL" in res.output
