"""Bad recipes and bad environments refused by ``campaign run``: one message naming the file and the field or
line, exit status 2, no traceback, and the database and earlier outputs left as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from campaign.cli.app import app
from tests.reliability.corpus import RECIPE_CASES, RecipeCase
from tests.reliability.world import assert_refused, db_dump

runner = CliRunner()


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda c: c.id)
def test_bad_recipe_is_refused(case: RecipeCase, world: tuple[Path, str]) -> None:
    root, url = world
    recipe = root / "bad.yaml"
    recipe.write_text(case.text)
    out = assert_refused(["run", str(recipe), "--db", url, "--quiet"], root, url)
    for frag in case.fragments:
        assert frag.format(path=recipe) in out, f"{frag!r} not in {out!r}"
    assert out.count("error:") == 1


def test_recipe_corpus_is_large_enough() -> None:
    assert len(RECIPE_CASES) >= 50
    assert len({c.id for c in RECIPE_CASES}) == len(RECIPE_CASES)


GOOD = "campaign: fresh\ndatasets:\n  - {name: demo-emt, count: 4}\nstages:\n  preprocess: {cutoff: 4.0}\n"


def test_missing_recipe_file(world: tuple[Path, str]) -> None:
    root, url = world
    out = assert_refused(["run", str(root / "nope.yaml"), "--db", url, "--quiet"], root, url)
    assert f"{root / 'nope.yaml'}" in out and "no such file" in out


def test_recipe_is_a_directory(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "dir.yaml").mkdir()
    out = assert_refused(["run", str(root / "dir.yaml"), "--db", url, "--quiet"], root, url)
    assert f"{root / 'dir.yaml'}" in out and "cannot read" in out


def test_recipe_not_text(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "bin.yaml").write_bytes(b"\xff\xfe\x00campaign\x80\x81")
    out = assert_refused(["run", str(root / "bin.yaml"), "--db", url, "--quiet"], root, url)
    assert f"{root / 'bin.yaml'}" in out


def test_unknown_profile(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text(GOOD + "profiles:\n  big: {seed: 2}\n")
    out = assert_refused(["run", str(root / "r.yaml"), "--db", url, "--quiet", "--profile", "huge"], root, url)
    assert f"{root / 'r.yaml'}:6: profiles: no profile 'huge' (known: big)" in out


def test_database_that_does_not_answer(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text(GOOD)
    out = assert_refused(["run", str(root / "r.yaml"), "--quiet", "--db", "postgresql+psycopg://u:pw@127.0.0.1:9/x"],
                   root, url)
    assert "cannot reach database postgresql+psycopg://u:***@127.0.0.1:9/x" in out
    assert "pw@" not in out


@pytest.mark.parametrize(("db", "fragment"), [
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("sqlite:////nonexistent-dir/sub/c.db", "directory /nonexistent-dir/sub does not exist"),
    ("postgresql+psycopg://u:pw@h:notaport/x", "not a database URL"),
])
def test_unusable_database_url(db: str, fragment: str, world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text(GOOD)
    out = assert_refused(["run", str(root / "r.yaml"), "--quiet", "--db", db], root, url)
    assert fragment in out


def test_database_url_in_recipe_that_does_not_answer(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text(GOOD + "database: postgresql+psycopg://u@127.0.0.1:9/x\n")
    out = assert_refused(["run", str(root / "r.yaml"), "--quiet"], root, url)
    assert "cannot reach database" in out


def test_unwritable_workdir(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "blocker").write_text("a file where the workdir should be\n")
    (root / "r.yaml").write_text(GOOD + "workdir: blocker/runs\n")
    out = assert_refused(["run", str(root / "r.yaml"), "--db", url, "--quiet"], root, url)
    assert "workdir" in out and "blocker" in out and "not writable" in out


def test_campaign_name_taken_by_another_recipe(world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text(GOOD.replace("fresh", "earlier"))
    out = assert_refused(["run", str(root / "r.yaml"), "--db", url, "--quiet"], root, url)
    assert "campaign 'earlier' already exists with a different recipe" in out


def test_resume_unknown_campaign(world: tuple[Path, str]) -> None:
    root, url = world
    out = assert_refused(["resume", "nobody", "--db", url, "--quiet"], root, url)
    assert "no campaign named 'nobody'" in out


@pytest.mark.slow
def test_full_disk_for_the_database(world: tuple[Path, str]) -> None:
    """The database's disk filling up mid-run (SQLite ``max_page_count`` reached: the error a full disk gives)
    ends the run with one message naming the database, exit 2, no traceback; what was committed is consistent
    and the earlier campaign is untouched."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    root, url = world
    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    earlier = [line for line in db_dump(url) if "earlier" in line]
    (root / "r.yaml").write_text(GOOD)

    def _full(dbapi_conn: sqlite3.Connection, _rec: object) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", _full)
    try:
        res = runner.invoke(app, ["run", str(root / "r.yaml"), "--db", url, "--quiet"])
    finally:
        event.remove(Engine, "connect", _full)
    out = res.output.replace("\n", "")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in out and f"cannot write to database {url}" in out and "full" in out
    assert [line for line in db_dump(url) if "earlier" in line] == earlier
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
